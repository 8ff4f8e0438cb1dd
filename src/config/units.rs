//! Human-readable durations (`"30s"`, `"250ms"`, `"1m"`) and sizes (`"256MiB"`, `"8 MB"`) as
//! they appear in the TOML file. Parsing is delegated to `humantime` and `bytesize`; this module
//! only turns their errors into messages that name the offending key.

use std::time::Duration;

use super::ConfigError;

pub fn duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| ConfigError::Invalid {
        key: key.to_string(),
        message: format!("{value:?} is not a duration ({e}); write it like \"30s\" or \"250ms\""),
    })
}

pub fn size(key: &str, value: &str) -> Result<u64, ConfigError> {
    value
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| ConfigError::Invalid {
            key: key.to_string(),
            message: format!("{value:?} is not a size ({e}); write it like \"256MiB\""),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_from_human_strings() {
        assert_eq!(duration("k", "30s").ok(), Some(Duration::from_secs(30)));
        assert_eq!(
            duration("k", "250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(duration("k", "1m").ok(), Some(Duration::from_secs(60)));
        assert_eq!(duration("k", "0s").ok(), Some(Duration::ZERO));
    }

    #[test]
    fn bad_duration_names_the_key() {
        let e = duration("cache.default_ttl", "soon")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache.default_ttl"), "{e}");
        assert!(duration("k", "30").is_err());
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!(size("k", "256MiB").ok(), Some(256 * 1024 * 1024));
        assert_eq!(size("k", "8 MB").ok(), Some(8_000_000));
        assert_eq!(size("k", "1KiB").ok(), Some(1024));
        assert_eq!(size("k", "100").ok(), Some(100));
        let e = size("cache.max_memory", "lots").unwrap_err().to_string();
        assert!(e.contains("cache.max_memory"), "{e}");
    }
}
