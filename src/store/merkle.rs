//! The stored complete subtrees of the audit log's Merkle tree (see `crate::merkle`).

use super::{Db, OptionalExtension, ToValue};
use crate::error::{Error, Result};
use crate::merkle::Hash;
use crate::params;

fn decode(text: &str) -> Result<Hash> {
    hex::decode(text)
        .ok()
        .and_then(|b| <Hash>::try_from(b.as_slice()).ok())
        .ok_or_else(|| {
            Error::Environment(
                "A stored Merkle node is not a SHA-256 hash; run `pim audit verify`.".to_string(),
            )
        })
}

impl Db {
    /// How many leaves the stored tree has.
    pub fn merkle_leaves(&self) -> Result<u64> {
        if let Some(n) = self.log_end.borrow().as_ref().and_then(|e| e.leaves) {
            return Ok(n);
        }
        let n: Option<i64> = self.query_row(
            "SELECT max(idx) FROM merkle_nodes WHERE level = 0",
            params![],
            |r| r.get(0),
        )?;
        let n = n.map_or(0, |i| i as u64 + 1);
        if let Some(end) = self.log_end.borrow_mut().as_mut() {
            end.leaves = Some(n);
        }
        Ok(n)
    }

    /// The complete subtree at `level`, `idx`.
    pub fn merkle_node(&self, level: u32, idx: u64) -> Result<Hash> {
        let kept = self.log_end.borrow().as_ref().and_then(|e| {
            e.left
                .get(level as usize)
                .copied()
                .flatten()
                .filter(|(i, _)| *i == idx)
        });
        if let Some((_, hash)) = kept {
            return Ok(hash);
        }
        let text: Option<String> = self
            .query_row(
                "SELECT hash FROM merkle_nodes WHERE level = ?1 AND idx = ?2",
                params![level, idx as i64],
                |r| r.get(0),
            )
            .optional()?;
        match text {
            Some(t) => decode(&t),
            None => Err(Error::Environment(format!(
                "The audit log's Merkle tree has no node {level}/{idx}; run any change as its owner to fill it in."
            ))),
        }
    }

    /// Store complete subtrees `(level, idx, hash)`, in multi-row statements.
    pub fn insert_merkle_nodes(&self, nodes: &[(u32, u64, Hash)]) -> Result<()> {
        let kept = self.log_end.borrow_mut().take();
        for chunk in nodes.chunks(super::ROWS_PER_INSERT) {
            let rows: Vec<(i64, i64, String)> = chunk
                .iter()
                .map(|(level, idx, hash)| (i64::from(*level), *idx as i64, hex::encode(hash)))
                .collect();
            let values: Vec<&dyn ToValue> = rows
                .iter()
                .flat_map(|(l, i, h)| [l as &dyn ToValue, i, h])
                .collect();
            self.execute(
                &super::values_rows("INSERT INTO merkle_nodes (level, idx, hash)", 3, rows.len()),
                &values,
            )?;
        }
        if let Some(mut end) = kept {
            for &(level, idx, hash) in nodes {
                if level == 0 {
                    end.leaves = end.leaves.map(|n| n.max(idx + 1));
                }
                if idx.is_multiple_of(2) {
                    let level = level as usize;
                    if end.left.len() <= level {
                        end.left.resize(level + 1, None);
                    }
                    end.left[level] = Some((idx, hash));
                }
            }
            *self.log_end.borrow_mut() = Some(end);
        }
        Ok(())
    }
}
