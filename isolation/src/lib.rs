//! Flotilla's container runtime: OCI images, rootfs, namespaces, cgroups, capabilities, seccomp.
//! Knows nothing of pods. (Filled in by the container runtime work.)
