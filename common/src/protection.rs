//! Protection classes: `ec:K+M` (Reed–Solomon) and `replica:N` (K=1, M=N-1).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Most data shards a stripe may have.
pub const MAX_DATA_SHARDS: u8 = 16;
/// Most parity shards (or extra replicas) a stripe may have.
pub const MAX_PARITY_SHARDS: u8 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Protection {
    /// Data shards.
    pub k: u8,
    /// Parity shards (extra copies when `k == 1`).
    pub m: u8,
}

impl Protection {
    pub const DEFAULT: Protection = Protection { k: 4, m: 2 };

    pub fn new(k: u8, m: u8) -> Result<Self, Error> {
        let bad = |why: &str| Error::InvalidProtection {
            spec: format!("ec:{k}+{m}"),
            why: why.to_string(),
        };
        if k == 0 || k > MAX_DATA_SHARDS {
            return Err(bad(&format!("K must be 1..={MAX_DATA_SHARDS}")));
        }
        if m > MAX_PARITY_SHARDS {
            return Err(bad(&format!("M must be 0..={MAX_PARITY_SHARDS}")));
        }
        Ok(Protection { k, m })
    }

    /// Shards in one stripe.
    pub fn width(&self) -> usize {
        usize::from(self.k) + usize::from(self.m)
    }

    pub fn is_replica(&self) -> bool {
        self.k == 1
    }

    /// Checks a chosen minimum of durable shards: K..=K+M, and never below
    /// K+1 when M >= 2 (an acknowledged write must survive one more loss).
    pub fn check_min_durable(&self, n: usize) -> Result<(), Error> {
        let (k, w) = (usize::from(self.k), self.width());
        let floor = if self.m >= 2 { k + 1 } else { k };
        if (floor..=w).contains(&n) {
            Ok(())
        } else {
            Err(Error::invalid(
                "min_durable",
                n.to_string(),
                format!("must be {floor}..={w} for {self}"),
            ))
        }
    }

    /// Fewest shards that must be durable before a write is acknowledged:
    /// K+1 when there is parity to spare, so one more loss never loses data.
    pub fn min_durable(&self) -> usize {
        if self.m == 0 {
            usize::from(self.k)
        } else {
            usize::from(self.k) + 1
        }
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.k == 1 {
            write!(f, "replica:{}", self.m + 1)
        } else {
            write!(f, "ec:{}+{}", self.k, self.m)
        }
    }
}

impl FromStr for Protection {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::InvalidProtection {
            spec: spec.to_string(),
            why: why.to_string(),
        };
        let num = |s: &str| -> Result<u8, Error> {
            s.parse::<u8>()
                .map_err(|_| bad("expected ec:K+M or replica:N with small integers"))
        };
        if let Some(rest) = spec.strip_prefix("ec:") {
            let (k, m) = rest.split_once('+').ok_or_else(|| bad("expected ec:K+M"))?;
            let (k, m) = (num(k)?, num(m)?);
            if k < 2 {
                return Err(bad("ec needs K >= 2 (use replica:N for copies)"));
            }
            Protection::new(k, m).map_err(|e| bad(&e.to_string()))
        } else if let Some(n) = spec.strip_prefix("replica:") {
            let n = num(n)?;
            if n == 0 || n > MAX_PARITY_SHARDS + 1 {
                return Err(bad(&format!("N must be 1..={}", MAX_PARITY_SHARDS + 1)));
            }
            Protection::new(1, n - 1)
        } else {
            Err(bad("expected ec:K+M or replica:N"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_durable_bounds() {
        let p: Protection = "ec:4+2".parse().unwrap();
        assert!(p.check_min_durable(4).is_err(), "below K+1 with M >= 2");
        assert!(p.check_min_durable(5).is_ok());
        assert!(p.check_min_durable(6).is_ok());
        assert!(p.check_min_durable(7).is_err());
        let p: Protection = "ec:4+1".parse().unwrap();
        assert!(p.check_min_durable(4).is_ok(), "K allowed with M = 1");
        let p: Protection = "replica:3".parse().unwrap();
        assert!(p.check_min_durable(1).is_err());
        assert!(p.check_min_durable(2).is_ok());
    }

    #[test]
    fn parses_and_prints() {
        for s in ["ec:4+2", "ec:2+1", "replica:3", "replica:1", "ec:16+8"] {
            assert_eq!(s.parse::<Protection>().unwrap().to_string(), s);
        }
        assert_eq!(
            "replica:3".parse::<Protection>().unwrap(),
            Protection { k: 1, m: 2 }
        );
    }

    #[test]
    fn rejects_nonsense() {
        for s in [
            "",
            "ec:0+9",
            "ec:4",
            "ec:4+9",
            "ec:17+1",
            "ec:1+2",
            "replica:0",
            "replica:10",
            "raid5",
            "ec:-1+2",
            "ec:4+2x",
            "ec:300+1",
        ] {
            assert!(s.parse::<Protection>().is_err(), "{s} accepted");
        }
    }
}
