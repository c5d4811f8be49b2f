//! The audit log as an RFC 6962 / RFC 9162 Merkle tree: a leaf is `SHA-256(0x00 ‖ the
//! event's canonical bytes)`, a node `SHA-256(0x01 ‖ left ‖ right)`, and a tree of `n` leaves
//! splits at the largest power of two below `n`.
//!
//! The store keeps the hash of every *complete* subtree (level `l`, index `i` covers leaves
//! `i·2^l .. (i+1)·2^l`), added as events are appended: an append costs O(log n), and a
//! root, an inclusion proof or a consistency proof for any size needs O(log n) of them. The
//! functions here take those hashes through `get` and never touch the store themselves.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(bytes: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(bytes);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest(b"").into()
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// A stored complete subtree: (level, index).
pub type Get<'a> = &'a mut dyn FnMut(u32, u64) -> crate::Result<Hash>;

/// MTH of leaves `start .. start + n`, from the complete subtrees.
fn subtree(get: Get<'_>, start: u64, n: u64) -> crate::Result<Hash> {
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return get(n.trailing_zeros(), start / n);
    }
    let k = split(n);
    let left = subtree(get, start, k)?;
    let right = subtree(get, start + k, n - k)?;
    Ok(node_hash(&left, &right))
}

/// The root of the tree of the first `n` leaves.
pub fn root(get: Get<'_>, n: u64) -> crate::Result<Hash> {
    if n == 0 {
        return Ok(empty_root());
    }
    subtree(get, 0, n)
}

/// The complete subtrees an append of leaf `index` completes: (level, index) of each, from
/// the leaf up (the caller stores the leaf, then each parent, whose children are stored).
pub fn completed_by(index: u64) -> impl Iterator<Item = (u32, u64)> {
    let mut level = 0;
    let mut i = index;
    std::iter::from_fn(move || {
        if level == 0 {
            level = 1;
            return Some((0, i));
        }
        if i % 2 == 1 {
            i /= 2;
            level += 1;
            Some((level - 1, i))
        } else {
            None
        }
    })
}

/// RFC 9162 §2.1.3.1: the inclusion proof of leaf `m` in the tree of the first `n` leaves.
pub fn inclusion_proof(get: Get<'_>, m: u64, n: u64) -> crate::Result<Vec<Hash>> {
    fn path(get: Get<'_>, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) -> crate::Result<()> {
        if n <= 1 {
            return Ok(());
        }
        let k = split(n);
        if m < k {
            path(get, m, start, k, out)?;
            out.push(subtree(get, start + k, n - k)?);
        } else {
            path(get, m - k, start + k, n - k, out)?;
            out.push(subtree(get, start, k)?);
        }
        Ok(())
    }
    let mut out = Vec::new();
    path(get, m, 0, n, &mut out)?;
    Ok(out)
}

/// RFC 9162 §2.1.4.1: the consistency proof between the trees of `m` and `n` leaves.
pub fn consistency_proof(get: Get<'_>, m: u64, n: u64) -> crate::Result<Vec<Hash>> {
    fn subproof(
        get: Get<'_>,
        m: u64,
        start: u64,
        n: u64,
        complete: bool,
        out: &mut Vec<Hash>,
    ) -> crate::Result<()> {
        if m == n {
            if !complete {
                out.push(subtree(get, start, n)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            subproof(get, m, start, k, complete, out)?;
            out.push(subtree(get, start + k, n - k)?);
        } else {
            subproof(get, m - k, start + k, n - k, false, out)?;
            out.push(subtree(get, start, k)?);
        }
        Ok(())
    }
    let mut out = Vec::new();
    if 0 < m && m < n {
        subproof(get, m, 0, n, true, &mut out)?;
    }
    Ok(out)
}

/// RFC 9162 §2.1.3.2: whether `proof` shows `leaf` at `index` in the tree of `size` leaves
/// whose root is `root`.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return false;
        }
        if f_n % 2 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n % 2 == 0 {
                while f_n % 2 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && &r == root
}

/// RFC 9162 §2.1.4.2: whether `proof` shows the tree of `size2` leaves (root `root2`) extends
/// the tree of `size1` leaves (root `root1`).
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &Hash,
    root2: &Hash,
    proof: &[Hash],
) -> bool {
    if size1 > size2 {
        return false;
    }
    if size1 == size2 {
        return proof.is_empty() && root1 == root2;
    }
    if size1 == 0 {
        return proof.is_empty();
    }
    let mut proof: Vec<Hash> = proof.to_vec();
    if size1.is_power_of_two() {
        proof.insert(0, *root1);
    }
    let Some(first) = proof.first().copied() else {
        return false;
    };
    let (mut f_n, mut s_n) = (size1 - 1, size2 - 1);
    while f_n % 2 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (first, first);
    for c in &proof[1..] {
        if s_n == 0 {
            return false;
        }
        if f_n % 2 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n % 2 == 0 {
                while f_n % 2 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    &fr == root1 && &sr == root2 && s_n == 0
}

/// Builds the root of a tree from its leaves as they stream past, keeping only the right
/// edge (O(log n) memory): for checking a log against a checkpoint without trusting any
/// stored node.
#[derive(Default)]
pub struct Frontier {
    /// Complete subtrees on the right edge, largest first: (leaves, hash).
    edge: Vec<(u64, Hash)>,
    size: u64,
}

impl Frontier {
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (1u64, leaf);
        while let Some(&(n, h)) = self.edge.last() {
            if n != node.0 {
                break;
            }
            self.edge.pop();
            node = (n * 2, node_hash(&h, &node.1));
        }
        self.edge.push(node);
        self.size += 1;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn root(&self) -> Hash {
        let mut it = self.edge.iter().rev();
        let Some(&(_, mut r)) = it.next() else {
            return empty_root();
        };
        for (_, h) in it {
            r = node_hash(h, &r);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// MTH straight from the RFC's definition, over all the leaves.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    /// Complete subtrees, as the store keeps them.
    fn stored(leaves: &[Hash]) -> std::collections::HashMap<(u32, u64), Hash> {
        let mut nodes = std::collections::HashMap::new();
        for (i, l) in leaves.iter().enumerate() {
            for (level, idx) in completed_by(i as u64) {
                let h = if level == 0 {
                    *l
                } else {
                    node_hash(
                        &nodes[&(level - 1, idx * 2)],
                        &nodes[&(level - 1, idx * 2 + 1)],
                    )
                };
                nodes.insert((level, idx), h);
            }
        }
        nodes
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("event {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn known_answers() {
        // RFC 6962's empty tree, and a one-leaf tree of the empty string.
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    proptest! {
        #[test]
        fn roots_and_proofs_match_the_rfc(n in 1usize..70, a in 0usize..70, b in 0usize..70) {
            let all = leaves(n);
            let nodes = stored(&all);
            let mut get = |l: u32, i: u64| Ok(nodes[&(l, i)]);
            let mut f = Frontier::default();
            for (i, l) in all.iter().enumerate() {
                f.push(*l);
                prop_assert_eq!(f.root(), mth(&all[..=i]));
                prop_assert_eq!(root(&mut get, i as u64 + 1).unwrap(), mth(&all[..=i]));
            }
            let size = (b % n) as u64 + 1;
            let m = (a as u64) % size;
            let r = mth(&all[..size as usize]);
            let proof = inclusion_proof(&mut get, m, size).unwrap();
            prop_assert!(verify_inclusion(&all[m as usize], m, size, &proof, &r));
            prop_assert!(!verify_inclusion(&leaf_hash(b"other"), m, size, &proof, &r));
            let old = (a as u64 % size) + 1;
            let r_old = mth(&all[..old as usize]);
            let proof = consistency_proof(&mut get, old, size).unwrap();
            prop_assert!(verify_consistency(old, size, &r_old, &r, &proof));
            prop_assert!(!verify_consistency(old, size, &leaf_hash(b"forged"), &r, &proof));
            if old < size {
                // A truncated or rewritten log is no extension of the old tree.
                let mut forked = all[..size as usize].to_vec();
                forked[(old - 1) as usize] = leaf_hash(b"rewritten");
                prop_assert!(!verify_consistency(old, size, &r_old, &mth(&forked), &proof));
            }
        }
    }
}
