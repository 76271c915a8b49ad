//! Kubernetes resource quantities ("100m", "64Mi", "1.5", "2e3"), checked before they go into a
//! patch: the API server would reject a bad one too, but with a message about the pod's
//! `spec.initContainers[1].resources` that the user never wrote; ours names the annotation.

/// Parses a non-negative quantity and returns its value in base units (cores, bytes), close
/// enough to compare a request with a limit.
pub fn parse_quantity(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    if unsigned.starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    let number_len = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return Err(format!("{text:?} is not a quantity like 100m, 0.5, 64Mi or 1Gi"));
    }
    let mantissa: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a quantity like 100m, 0.5, 64Mi or 1Gi"))?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..]
                .parse()
                .map_err(|_| format!("{text:?} has a malformed exponent {exponent:?}; write it like 2e3"))?;
            10f64.powi(power)
        }
        other => {
            return Err(format!(
                "{text:?} has an unknown unit {other:?}; use m for millicores, Ki/Mi/Gi for bytes"
            ));
        }
    };
    Ok(mantissa * multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_users_write_parse_to_base_units() {
        assert_eq!(parse_quantity("100m").unwrap(), 0.1);
        assert_eq!(parse_quantity("1.5").unwrap(), 1.5);
        assert_eq!(parse_quantity(".5").unwrap(), 0.5);
        assert_eq!(parse_quantity("64Mi").unwrap(), 64.0 * 1024.0 * 1024.0);
        assert_eq!(parse_quantity("1G").unwrap(), 1e9);
        assert_eq!(parse_quantity("2e3").unwrap(), 2000.0);
        assert_eq!(parse_quantity("+1").unwrap(), 1.0);
    }

    #[test]
    fn what_the_api_server_would_reject_is_an_error_naming_the_value() {
        for (text, needle) in [
            ("", "is not a quantity"),
            ("abc", "is not a quantity"),
            ("1.2.3", "is not a quantity"),
            ("-1", "is negative"),
            ("64MB", "unknown unit \"MB\""),
            ("100 m", "unknown unit"),
            ("1ex", "malformed exponent"),
            ("m", "is not a quantity"),
        ] {
            let err = parse_quantity(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
