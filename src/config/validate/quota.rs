//! Validation of `quota:` (the per-credential token bucket) and `cache:`
//! (the conditional cache).

use super::limits::byte_size;
use super::{Problems, duration_or};
use crate::config::file::{ByteSizeFile, CacheSizeFile, ConfigFile};
use crate::config::{CacheConfig, QuotaConfig};

pub(super) fn quota(raw: &ConfigFile, problems: &mut Problems) -> QuotaConfig {
    let default = QuotaConfig::default();
    let Some(q) = raw.quota.as_ref() else {
        return default;
    };
    let per_second = q.per_second.unwrap_or(default.per_second);
    let burst = match q.burst {
        None => per_second,
        Some(0) if per_second > 0 => {
            problems.add(
                "quota.burst",
                "must be at least 1 (or set quota.per_second: 0 to turn smoothing off)",
            );
            per_second
        }
        Some(b) => b,
    };
    let max_wait = duration_or(
        q.max_wait.as_deref(),
        "quota.max_wait",
        default.max_wait,
        problems,
    );
    QuotaConfig {
        per_second,
        burst,
        max_wait,
    }
}

pub(super) fn cache(raw: &ConfigFile, problems: &mut Problems) -> CacheConfig {
    let default = CacheConfig::default();
    let Some(c) = raw.cache.as_ref() else {
        return default;
    };
    let mut size = |field: &str, value: Option<&CacheSizeFile>, default: usize| match value {
        None => default,
        Some(v) => byte_size(&match v {
            CacheSizeFile::Number(n) => ByteSizeFile::Number(*n),
            CacheSizeFile::Text(t) => ByteSizeFile::Text(t.clone()),
        })
        .unwrap_or_else(|| {
            problems.add(
                field,
                "expected a size written like 64MiB, 512KiB or 1048576",
            );
            default
        }),
    };
    let max_bytes = size(
        "cache.max_bytes",
        c.max_bytes.as_ref(),
        default.max_bytes as usize,
    );
    let max_entry_bytes = size(
        "cache.max_entry_bytes",
        c.max_entry_bytes.as_ref(),
        default.max_entry_bytes,
    );
    // moka weighs entries in u32: a larger entry could not be weighed.
    if max_entry_bytes > u32::MAX as usize / 2 {
        problems.add("cache.max_entry_bytes", "must be at most 2GiB");
    }
    CacheConfig {
        max_bytes: max_bytes as u64,
        max_entry_bytes,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{CacheConfig, Config, QuotaConfig};
    use std::path::Path;
    use std::time::Duration;

    fn load(extra: &str) -> Result<Config, String> {
        let (_, _) = ((), ());
        let text = format!(
            "app:\n  id: 75\n  private_key: {{ value: \"not a key\" }}\n{extra}routes: []\n"
        );
        Config::from_yaml(&text, Path::new("."), "t").map_err(|e| e.to_string())
    }

    fn problems(extra: &str) -> String {
        load(extra).err().unwrap_or_default()
    }

    #[test]
    fn defaults_follow_the_contract() {
        assert_eq!(QuotaConfig::default().per_second, 10);
        assert_eq!(QuotaConfig::default().burst, 10);
        assert_eq!(QuotaConfig::default().max_wait, Duration::from_secs(5));
        assert_eq!(CacheConfig::default().max_bytes, 64 << 20);
        assert_eq!(CacheConfig::default().max_entry_bytes, 1 << 20);
    }

    #[test]
    fn bad_values_name_their_field() {
        let p = problems("quota: { per_second: 5, burst: 0, max_wait: soon }\n");
        assert!(p.contains("quota.burst"), "{p}");
        assert!(p.contains("quota.max_wait"), "{p}");
        let p = problems("cache: { max_bytes: lots }\n");
        assert!(p.contains("cache.max_bytes"), "{p}");
        let p = problems("cache: { max_bytes: [1] }\n");
        assert!(p.contains("cache"), "{p}");
        let p = problems("quota: { per_sec: 5 }\n");
        assert!(p.contains("per_sec"), "{p}");
    }
}
