//! The options of `docker volume create -d tessera -o KEY=VALUE`.

use std::collections::HashMap;

use tessera_common::{validate, Protection};

use crate::{PluginError, Result};

/// Every option key a volume accepts.
pub const KNOWN: [&str; 3] = ["size", "protection", "min_durable"];

/// A volume's settings as `docker volume create` asked for them; `None`
/// where the caller gave no value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeOptions {
    pub size: Option<u64>,
    pub protection: Option<Protection>,
    pub min_durable: Option<u8>,
}

impl VolumeOptions {
    /// Parses Docker's `Opts`; any unknown key or bad value is an error.
    pub fn parse(opts: &HashMap<String, String>) -> Result<VolumeOptions> {
        let mut o = VolumeOptions::default();
        let mut keys: Vec<&String> = opts.keys().collect();
        keys.sort();
        for key in keys {
            let value = opts[key].as_str();
            match key.as_str() {
                "size" => o.size = Some(validate::volume_size(value)?),
                "protection" => o.protection = Some(value.parse()?),
                "min_durable" => {
                    let n = value.parse::<u8>().map_err(|_| {
                        PluginError::Invalid(format!("min_durable {value:?} is not a small number"))
                    })?;
                    o.min_durable = Some(n);
                }
                _ => {
                    return Err(PluginError::Invalid(format!(
                        "unknown option {:?}; known options: {}",
                        key.chars().take(64).collect::<String>(),
                        KNOWN.join(", ")
                    )))
                }
            }
        }
        if let Some(n) = o.min_durable {
            o.protection
                .unwrap_or(Protection::DEFAULT)
                .check_min_durable(n.into())?;
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<VolumeOptions> {
        VolumeOptions::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn parses_known_options() {
        let o = parse(&[
            ("size", "1GiB"),
            ("protection", "replica:3"),
            ("min_durable", "3"),
        ])
        .unwrap();
        assert_eq!(o.min_durable, Some(3));
        assert_eq!(o.size, Some(1 << 30));
        assert_eq!(o.protection, Some(Protection { k: 1, m: 2 }));
        assert_eq!(parse(&[]).unwrap(), VolumeOptions::default());
    }

    #[test]
    fn refuses_bad_values_and_unknown_keys() {
        for bad in [
            ("size", "-1"),
            ("size", "0"),
            ("size", "18446744073709551616"),
            ("size", "lots"),
            ("protection", "ec:0+9"),
            ("protection", "raid5"),
            ("colour", "blue"),
            ("Size", "1GiB"),
            ("min_durable", "4"),
            ("min_durable", "-1"),
        ] {
            let err = parse(&[bad]).unwrap_err().to_string();
            assert!(!err.is_empty(), "{bad:?}");
        }
        let err = parse(&[("colour", "blue")]).unwrap_err().to_string();
        assert!(err.contains("unknown option \"colour\""), "{err}");
    }
}
