//! Validation of every name and size that comes from outside.

use crate::Error;

/// Volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}`.
pub fn volume_name(name: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::invalid("volume name", name, why));
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return bad("must not be empty");
    }
    if bytes.len() > 128 {
        return bad("must be at most 128 characters");
    }
    if !bytes[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b))
    {
        return bad("may contain only letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// Largest name of one directory entry, as in Linux.
pub const MAX_FILE_NAME: usize = 255;

/// A directory entry name: 1..=255 bytes, no '/', no NUL, not "." or "..".
pub fn file_name(name: &[u8]) -> Result<(), Error> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    if name.is_empty() || name == b"." || name == b".." {
        return Err(Error::invalid("file name", shown(), "must be a real name"));
    }
    if name.len() > MAX_FILE_NAME {
        return Err(Error::invalid(
            "file name",
            shown(),
            "longer than 255 bytes",
        ));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(Error::invalid("file name", shown(), "contains '/' or NUL"));
    }
    Ok(())
}

/// Smallest and largest volume size accepted.
pub const MIN_VOLUME_SIZE: u64 = 1 << 20;
pub const MAX_VOLUME_SIZE: u64 = 1 << 60;

/// Parses `512MiB`, `10GiB`, `1TiB`, `4096` (bytes) and checks the volume
/// size bounds.
pub fn volume_size(s: &str) -> Result<u64, Error> {
    let size = parse_size(s)?;
    if !(MIN_VOLUME_SIZE..=MAX_VOLUME_SIZE).contains(&size) {
        return Err(Error::invalid(
            "volume size",
            s,
            "must be between 1MiB and 1EiB",
        ));
    }
    Ok(size)
}

/// Parses a byte count with an optional binary suffix (K, KiB, M, MiB, ...).
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = |why: &str| Error::invalid("size", s, why);
    if num.is_empty() {
        return Err(bad(
            "expected a number with an optional unit such as MiB or GiB",
        ));
    }
    let n: u64 = num.parse().map_err(|_| bad("number too large"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        "P" | "PiB" => 50,
        _ => return Err(bad("unknown unit (use KiB, MiB, GiB, TiB, PiB)")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| bad("too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names() {
        for ok in ["a", "vol-1", "A.b_c", &"x".repeat(128)] {
            assert!(volume_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            ".hidden",
            "-x",
            "a/b",
            "a\0b",
            "é",
            &"x".repeat(129),
            &"y".repeat(300),
        ] {
            assert!(volume_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_names() {
        assert!(file_name(b"hello.txt").is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256]] {
            assert!(file_name(bad).is_err());
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(volume_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(volume_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in [
            "0",
            "-1",
            "",
            "1XB",
            "18446744073709551616",
            "16EiB",
            "99999999999PiB",
            "1KiB",
            "2EiB",
        ] {
            assert!(volume_size(bad).is_err(), "{bad}");
        }
    }
}
