//! Small value parsers shared by config sections: durations, rates and `${ENV}` expansion.

use std::time::Duration;

/// Parses `"20us"`, `"250ms"`, `"5s"`, `"2m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 =
        number.parse().map_err(|_| format!("`{text}` is not a duration; write e.g. \"250ms\", \"5s\", \"2m\""))?;
    let duration = match unit {
        "us" => Duration::from_micros(value),
        "ms" => Duration::from_millis(value),
        "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value * 60),
        "h" => Duration::from_secs(value * 3600),
        "" => return Err(format!("`{text}` has no unit; write e.g. \"20us\", \"250ms\" or \"5s\"")),
        _ => return Err(format!("`{text}` has unit `{unit}`; use us, ms, s, m or h")),
    };
    Ok(duration)
}

/// Replaces every `${NAME}` with the environment variable NAME; a missing
/// variable is an error so a secret never silently becomes empty.
pub fn expand_env(text: &str) -> Result<String, String> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed `${{` in `{text}`"))?;
        let name = &after[..end];
        let value = std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A request rate: `count` requests per `period` (`"100/s"`, `"20/m"`, `"500/h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl Rate {
    /// Time between two requests at this rate (the GCRA emission interval).
    pub fn interval(&self) -> Duration {
        self.period / self.count
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Parses `"N/s"`, `"N/m"` or `"N/h"` with 1 <= N <= 1,000,000,000.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let hint = || format!("`{text}` is not a rate; write e.g. \"100/s\", \"20/m\" or \"500/h\"");
    let (count, unit) = text.trim().split_once('/').ok_or_else(hint)?;
    let count: u32 = count.trim().parse().map_err(|_| hint())?;
    if count == 0 || count > 1_000_000_000 {
        return Err(format!("`{text}`: the count must be between 1 and 1000000000"));
    }
    let period = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        other => return Err(format!("`{text}` has unit `{other}`; use s, m or h")),
    };
    Ok(Rate { count, period })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_each_unit() {
        assert_eq!(parse_duration("20us"), Ok(Duration::from_micros(20)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn durations_reject_missing_or_unknown_units() {
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn rates_accept_each_unit_and_reject_nonsense() {
        let r = parse_rate("100/s").unwrap();
        assert_eq!((r.count, r.period, r.interval()), (100, Duration::from_secs(1), Duration::from_millis(10)));
        assert_eq!(parse_rate("20/m").unwrap().period, Duration::from_secs(60));
        assert_eq!(parse_rate("5/h").unwrap().to_string(), "5/h");
        for bad in ["100", "0/s", "x/s", "10/d", "/s", "-1/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_expansion_reads_variables_and_rejects_missing_ones() {
        // PATH is set in every test environment.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(expand_env("a${PATH}b").unwrap(), format!("a{path}b"));
        assert!(expand_env("${TOLLGATE_SURELY_UNSET_VARIABLE}").is_err());
        assert!(expand_env("${PATH").is_err());
        assert_eq!(expand_env("plain").unwrap(), "plain");
    }
}
