//! A pod's sandbox: what its containers share and what outlives any one of them — the
//! network namespace, veth and address (dataplane), IPC and UTS namespaces kept alive by bind
//! mounts (no pause process), and the pod's /etc/hosts, /etc/resolv.conf and /etc/hostname.
//!
//! ```text
//!  <pods>/<uid>/ns/{ipc,uts}        bind mounts of nsfs files
//!  <pods>/<uid>/etc/{hosts,resolv.conf,hostname}
//!  <pods>/<uid>/volumes/<name>/     emptyDir, configMap, secret contents
//!  <pods>/<uid>/containers/<id>/    bundle: config.json, rootfs/{upper,work,merged}
//! ```

use std::{
    io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{unshare, CloneFlags},
};
use serde_json::Value;

use super::spec::SandboxPaths;

const NSFS_MAGIC: i64 = 0x6e73_6673;

fn is_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

/// Makes new IPC and UTS namespaces (hostname set) and pins them at `ipc` and `uts`. A
/// thread may unshare these on its own; it ends after pinning, and the mounts keep them.
fn pin_namespaces(ipc: &Path, uts: &Path, hostname: &str) -> io::Result<()> {
    if is_namespace(ipc) && is_namespace(uts) {
        return Ok(());
    }
    for p in [ipc, uts] {
        if is_namespace(p) {
            let _ = umount2(p, MntFlags::MNT_DETACH);
        }
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(p)?;
    }
    let (ipc, uts, hostname) = (ipc.to_path_buf(), uts.to_path_buf(), hostname.to_string());
    std::thread::spawn(move || -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)?;
        nix::unistd::sethostname(&hostname)?;
        for (ns, target) in [("ipc", &ipc), ("uts", &uts)] {
            let src = format!("/proc/thread-self/ns/{ns}");
            mount(
                Some(src.as_str()),
                target.as_path(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                io::Error::other(format!("pinning the {ns} namespace at {}: {e}", target.display()))
            })?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

fn unpin(path: &Path) {
    while is_namespace(path) {
        if umount2(path, MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
    let _ = std::fs::remove_file(path);
}

/// The pod's hostname: spec.hostname, else its name (truncated to 63 characters).
pub fn hostname(pod: &Value) -> String {
    let h = pod["spec"]["hostname"]
        .as_str()
        .filter(|h| !h.is_empty())
        .or(pod["metadata"]["name"].as_str())
        .unwrap_or("pod");
    h.chars().take(63).collect()
}

/// /etc/hosts as the kubelet writes it, with the pod's address and hostAliases.
pub fn hosts_file(pod: &Value, ip: Ipv4Addr, cluster_domain: &str) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let host = hostname(pod);
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    match pod["spec"]["subdomain"].as_str().filter(|s| !s.is_empty()) {
        Some(sub) => s.push_str(&format!("{ip}\t{host}.{sub}.{ns}.svc.{cluster_domain}\t{host}\n")),
        None => s.push_str(&format!("{ip}\t{host}\n")),
    }
    for alias in pod["spec"]["hostAliases"].as_array().into_iter().flatten() {
        let names: Vec<&str> =
            alias["hostnames"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if let Some(aip) = alias["ip"].as_str() {
            s.push_str(&format!("# Entries added by HostAliases.\n{aip}\t{}\n", names.join("\t")));
        }
    }
    s
}

/// /etc/resolv.conf per dnsPolicy: ClusterFirst (the default) points at cluster DNS with the
/// namespace's search path; Default copies the node's; None takes dnsConfig alone.
pub fn resolv_conf(pod: &Value, dns: Ipv4Addr, cluster_domain: &str) -> String {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let policy = pod["spec"]["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let host_network = pod["spec"]["hostNetwork"].as_bool().unwrap_or(false);
    let node_resolv =
        || parse_resolv(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        match policy {
            "None" => (vec![], vec![], vec![]),
            // A host-network pod under ClusterFirst falls back to the node's, as in Kubernetes.
            "Default" => node_resolv(),
            "ClusterFirst" if host_network => node_resolv(),
            _ => (
                vec![dns.to_string()],
                vec![
                    format!("{ns}.svc.{cluster_domain}"),
                    format!("svc.{cluster_domain}"),
                    cluster_domain.to_string(),
                ],
                vec!["ndots:5".into()],
            ),
        };
    let cfg = &pod["spec"]["dnsConfig"];
    servers.extend(
        cfg["nameservers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from)),
    );
    searches.extend(
        cfg["searches"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from)),
    );
    for o in cfg["options"].as_array().into_iter().flatten() {
        let Some(name) = o["name"].as_str() else { continue };
        options.retain(|x| x.split(':').next() != Some(name));
        options.push(match o["value"].as_str() {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        });
    }
    let mut s = String::new();
    if !searches.is_empty() {
        s.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for n in servers.iter().take(3) {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !options.is_empty() {
        s.push_str(&format!("options {}\n", options.join(" ")));
    }
    s
}

fn parse_resolv(text: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut n, mut s, mut o) = (vec![], vec![], vec![]);
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => n.extend(f.next().map(String::from)),
            Some("search") | Some("domain") => s = f.map(String::from).collect(),
            Some("options") => o.extend(f.map(String::from)),
            _ => {}
        }
    }
    (n, s, o)
}

/// The pod's directory and the paths its containers share.
pub fn paths(dir: &Path, netns: PathBuf) -> SandboxPaths {
    SandboxPaths {
        netns,
        ipc: dir.join("ns/ipc"),
        uts: dir.join("ns/uts"),
        hosts: dir.join("etc/hosts"),
        resolv: dir.join("etc/resolv.conf"),
        hostname: dir.join("etc/hostname"),
    }
}

/// Creates (or re-adopts) the pod-local part of the sandbox: pinned IPC/UTS namespaces and
/// the /etc files. The network comes from the dataplane before this.
pub fn create(
    dir: &Path,
    pod: &Value,
    paths: &SandboxPaths,
    ip: Ipv4Addr,
    dns: Ipv4Addr,
    domain: &str,
) -> Result<()> {
    for d in ["ns", "etc", "volumes", "containers"] {
        std::fs::create_dir_all(dir.join(d))
            .with_context(|| format!("creating {}", dir.join(d).display()))?;
    }
    let host = hostname(pod);
    pin_namespaces(&paths.ipc, &paths.uts, &host).context("pod IPC and UTS namespaces")?;
    let write = |p: &Path, s: String| {
        flotilla_isolation::state::write_atomic(p, s.as_bytes())
            .with_context(|| format!("writing {}", p.display()))
    };
    write(&paths.hosts, hosts_file(pod, ip, domain))?;
    write(&paths.resolv, resolv_conf(pod, dns, domain))?;
    write(&paths.hostname, format!("{host}\n"))?;
    Ok(())
}

/// Removes the pod-local part: namespace pins, memory-backed volumes, the directory.
pub fn remove(dir: &Path) -> Result<()> {
    unpin(&dir.join("ns/ipc"));
    unpin(&dir.join("ns/uts"));
    // tmpfs volumes (emptyDir medium Memory, secrets) are mounts under volumes/.
    if let Ok(entries) = std::fs::read_dir(dir.join("volumes")) {
        for e in entries.flatten() {
            let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
        }
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hosts_and_resolv_follow_the_kubelet() {
        let pod = json!({"metadata": {"name": "web-0", "namespace": "prod"},
            "spec": {"hostname": "web-0", "subdomain": "web",
                "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}});
        let h = hosts_file(&pod, Ipv4Addr::new(10, 244, 0, 5), "cluster.local");
        assert!(h.contains("10.244.0.5\tweb-0.web.prod.svc.cluster.local\tweb-0\n"), "{h}");
        assert!(h.contains("10.1.2.3\tfoo.local\tbar.local\n"), "{h}");
        let r = resolv_conf(&pod, Ipv4Addr::new(10, 96, 0, 10), "cluster.local");
        assert_eq!(
            r,
            "search prod.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        let none = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["x.y"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}});
        assert_eq!(
            resolv_conf(&none, Ipv4Addr::new(10, 96, 0, 10), "cluster.local"),
            "search x.y\nnameserver 1.1.1.1\noptions ndots:2 edns0\n"
        );
        assert_eq!(hostname(&json!({"metadata": {"name": "n"}, "spec": {}})), "n");
    }
}
