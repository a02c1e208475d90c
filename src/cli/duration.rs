//! Durations on the command line: `90d`, `12h`, `30m` (minutes), `45s`,
//! `2w` — a positive whole number and one unit, nothing else, so a typo
//! such as `90` or `-1d` is refused instead of read as something else.

use std::time::Duration;

/// Parses a positive duration (see the module docs).
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad =
        |why: &str| format!("'{text}': {why}; use a positive number and a unit: 90d, 12h, 30m, 45s or 2w");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if t.starts_with('-') {
        return Err(bad("must be positive"));
    }
    if number.is_empty() {
        return Err(bad("no number"));
    }
    let count: u64 = number.parse().map_err(|_| bad("number too large"))?;
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "" => return Err(bad("no unit")),
        _ => return Err(bad("unknown unit")),
    };
    if count == 0 {
        return Err(bad("must be greater than zero"));
    }
    let seconds = count.checked_mul(seconds_per).ok_or_else(|| bad("too large"))?;
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_refusals() {
        assert_eq!(parse("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in [
            "0d",
            "-1d",
            "90",
            "d",
            "",
            "1.5h",
            "12 h",
            "3y",
            "99999999999999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("0h").unwrap_err().contains("greater than zero"));
        assert!(parse("-3d").unwrap_err().contains("positive"));
    }
}
