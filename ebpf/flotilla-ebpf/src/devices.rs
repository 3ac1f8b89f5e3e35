//! The cgroup v2 device filter (BPF_PROG_TYPE_CGROUP_DEVICE): cgroup v2 has no devices
//! controller, so a container's `linux.resources.devices` rules are this program, attached to
//! its cgroup. The runtime writes the rules into `RULES` when it loads the program (one load
//! per container, as runc and crun generate one program per container).
//!
//! Semantics are runc's: rules in spec order, the last one that matches decides, nothing
//! matching is denied; a rule matches when the device's type and numbers match and it grants
//! every access asked for (mknod, read, write).
#![no_std]
#![no_main]

use aya_ebpf::{macros::cgroup_device, programs::DeviceContext};
use flotilla_ebpf_common::{
    DeviceRule, DeviceRules, ANY_MAJOR, ANY_MINOR, DEV_ALL, MAX_DEVICE_RULES,
};

/// Set by the loader (`EbpfLoader::set_global`); read-only once loaded.
#[unsafe(no_mangle)]
static RULES: DeviceRules = DeviceRules {
    count: 0,
    rules: [DeviceRule { major: 0, minor: 0, kind: 0, access: 0, allow: 0, flags: 0 };
        MAX_DEVICE_RULES],
};

#[cgroup_device]
pub fn flotilla_devices(ctx: DeviceContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_cgroup_dev_ctx for the program's run.
    let dev = unsafe { &*ctx.device };
    let kind = (dev.access_type & 0xffff) as u8;
    let access = (dev.access_type >> 16) as u8;
    let (major, minor) = (dev.major, dev.minor);
    // Volatile reads: the compiler must not fold the loader-written table to its zeros.
    // SAFETY: reads of a static.
    let count = unsafe { core::ptr::read_volatile(&RULES.count) } as usize;
    let mut i = if count > MAX_DEVICE_RULES { MAX_DEVICE_RULES } else { count };
    while i > 0 {
        i -= 1;
        let Some(rule) = RULES.rules.get(i) else { return 0 };
        // SAFETY: a reference into the static table.
        let r = unsafe { core::ptr::read_volatile(rule) };
        let matches = (r.kind == DEV_ALL || r.kind == kind)
            && (r.flags & ANY_MAJOR != 0 || r.major == major)
            && (r.flags & ANY_MINOR != 0 || r.minor == minor)
            && access & !r.access == 0;
        if matches {
            return i32::from(r.allow != 0);
        }
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
