//! Placement: which nodes hold the shards of a placement group.
//!
//! Weighted rendezvous hashing: every (pg, node) pair gets a score, the
//! highest scores win, and no two shards of a PG share a failure domain. A
//! node joining or leaving only changes the PGs whose winners it affects.

use crate::{Error, NodeId};

#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: NodeId,
    /// Failure domain (the node's `zone`, `rack` or `host` label).
    pub domain: String,
    /// Relative capacity; 1.0 for equal nodes.
    pub weight: f64,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser: a well-spread, stable 64-bit hash.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// The PG a block belongs to.
pub fn pg_of(block: u64, pg_count: u32) -> u32 {
    (mix(block) % u64::from(pg_count)) as u32
}

/// Picks `count` nodes for `pg` of the class identified by `seed`, ordered by
/// shard index, in distinct failure domains.
pub fn place(seed: u64, pg: u32, nodes: &[Candidate], count: usize) -> Result<Vec<NodeId>, Error> {
    let mut scored: Vec<(f64, &Candidate)> = nodes
        .iter()
        .filter(|c| c.weight > 0.0)
        .map(|c| {
            let h = mix(seed ^ mix(u64::from(pg) ^ mix(c.id)));
            // Uniform in (0, 1]; -w/ln(u) is the weighted rendezvous score.
            let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            (-c.weight / u.ln(), c)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
    let mut chosen: Vec<&Candidate> = Vec::with_capacity(count);
    for (_, c) in scored {
        if chosen.len() == count {
            break;
        }
        if !chosen.iter().any(|x| x.domain == c.domain) {
            chosen.push(c);
        }
    }
    if chosen.len() < count {
        return Err(Error::NotEnoughDomains {
            needed: count,
            available: chosen.len(),
        });
    }
    Ok(chosen.into_iter().map(|c| c.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> Vec<Candidate> {
        (1..=n)
            .map(|id| Candidate {
                id,
                domain: format!("d{id}"),
                weight: 1.0,
            })
            .collect()
    }

    #[test]
    fn distinct_domains_and_stable() {
        let mut ns = nodes(6);
        ns[1].domain = "d1".into(); // nodes 1 and 2 share a domain
        for pg in 0..64 {
            let p = place(3, pg, &ns, 5).unwrap();
            assert_eq!(p, place(3, pg, &ns, 5).unwrap());
            assert!(!(p.contains(&1) && p.contains(&2)), "pg {pg}: {p:?}");
        }
        assert!(matches!(
            place(3, 0, &ns, 6),
            Err(Error::NotEnoughDomains { .. })
        ));
    }

    #[test]
    fn adding_a_node_moves_about_its_share() {
        let before = nodes(6);
        let after = nodes(7);
        let (mut moved, mut total) = (0, 0);
        for pg in 0..1024 {
            let a = place(1, pg, &before, 6).unwrap();
            let b = place(1, pg, &after, 6).unwrap();
            total += 6;
            moved += b.iter().filter(|x| !a.contains(x)).count();
        }
        let share = moved as f64 / total as f64;
        assert!((0.10..0.19).contains(&share), "moved {share}");
    }
}
