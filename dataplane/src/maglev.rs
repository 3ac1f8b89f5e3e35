//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4): a lookup table in which every
//! backend owns a near-equal share of entries, and adding or removing a backend moves few of
//! them. Built here, read by the tc program with the flow hash as index. Backends are sorted
//! first, so every node builds the same table from the same set.

use std::net::Ipv4Addr;

fn fnv1a(seed: u64, addr: Ipv4Addr, port: u16) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in addr.octets().into_iter().chain(port.to_be_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The table of size `m` (a power of two larger than the backend count) over `backends`, whose
/// entries are indexes into `backends`. Each backend's preference list is
/// `offset + j * skip (mod m)` with an odd skip, a full permutation for a power-of-two `m`
/// (the paper's prime `m` serves the same purpose).
pub fn table(backends: &[(Ipv4Addr, u16)], m: usize) -> Vec<u16> {
    let n = backends.len();
    assert!(m.is_power_of_two(), "maglev: table size {m} is not a power of two");
    assert!(n > 0 && n < m && n <= u16::MAX as usize, "maglev: {n} backends for a table of {m}");
    let perm: Vec<(usize, usize)> = backends
        .iter()
        .map(|&(a, p)| {
            let offset = (fnv1a(0, a, p) % m as u64) as usize;
            let skip = ((fnv1a(0x9e37_79b9_7f4a_7c15, a, p) % (m as u64 / 2)) * 2 + 1) as usize;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; n];
    let mut entry = vec![u16::MAX; m];
    let mut filled = 0;
    loop {
        for i in 0..n {
            let (offset, skip) = perm[i];
            let mut c = (offset + next[i] * skip) % m;
            while entry[c] != u16::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            entry[c] = i as u16;
            next[i] += 1;
            filled += 1;
            if filled == m {
                return entry;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u32) -> Vec<(Ipv4Addr, u16)> {
        (0..n).map(|i| (Ipv4Addr::from(0x0af4_0000 + i), 8080)).collect()
    }

    #[test]
    fn balanced_and_minimally_disruptive() {
        let m = 4096;
        let b = backends(10);
        let t = table(&b, m);
        let mut count = [0usize; 10];
        for &e in &t {
            count[e as usize] += 1;
        }
        // Maglev guarantees shares within a few entries of m/n.
        for c in count {
            assert!((c as i64 - (m / 10) as i64).abs() <= 10, "{count:?}");
        }
        // Removing one backend moves little besides that backend's own entries.
        let mut fewer = b.clone();
        let gone = fewer.remove(3);
        let t2 = table(&fewer, m);
        let moved = t
            .iter()
            .zip(&t2)
            .filter(|(a, c)| b[**a as usize] != gone && b[**a as usize] != fewer[**c as usize])
            .count();
        assert!(moved < m / 10, "{moved} entries of surviving backends moved");
        // Deterministic: the same set gives the same table.
        assert_eq!(t, table(&b, m));
    }
}
