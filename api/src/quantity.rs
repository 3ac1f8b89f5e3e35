//! Resource quantities (`500m`, `128Mi`, `1.5Gi`, `2e3`) as Kubernetes parses them, held
//! exactly in nano-units so requests and limits compare without rounding.

/// A parsed quantity in units of 10^-9 (cpu: nanocores; memory: nanobytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(pub i128);

const NANO: i128 = 1_000_000_000;

impl Quantity {
    pub fn parse(s: &str) -> Result<Quantity, String> {
        let bad = |why: &str| format!("quantity {s:?} {why}; expected e.g. 500m, 2, 128Mi, 1.5Gi");
        if s.is_empty() {
            return Err(bad("is empty"));
        }
        let (sign, body) = match s.as_bytes()[0] {
            b'-' => (-1, &s[1..]),
            b'+' => (1, &s[1..]),
            _ => (1, s),
        };
        let num_end = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
        let (num, suffix) = body.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad("has no number"));
        }
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        // Mantissa as an integer with `scale` decimal places.
        let digits = format!("{int_part}{frac_part}");
        if digits.len() > 30 {
            return Err(bad("is too long"));
        }
        let mantissa: i128 = digits.parse().map_err(|_| bad("has no number"))?;
        let scale = frac_part.len() as i32;
        let (base2, exp10): (i128, i32) = match suffix {
            "" => (1, 0),
            "n" => (1, -9),
            "u" => (1, -6),
            "m" => (1, -3),
            "k" => (1, 3),
            "M" => (1, 6),
            "G" => (1, 9),
            "T" => (1, 12),
            "P" => (1, 15),
            "E" => (1, 18),
            "Ki" => (1 << 10, 0),
            "Mi" => (1 << 20, 0),
            "Gi" => (1 << 30, 0),
            "Ti" => (1 << 40, 0),
            "Pi" => (1 << 50, 0),
            "Ei" => (1 << 60, 0),
            e if e.starts_with(['e', 'E']) => {
                let x: i32 = e[1..].parse().map_err(|_| bad("has a bad exponent"))?;
                if !(-30..=30).contains(&x) {
                    return Err(bad("has an exponent out of range"));
                }
                (1, x)
            }
            _ => return Err(bad("has an unknown suffix")),
        };
        // value = mantissa * 10^-scale * base2 * 10^exp10, in nano units: * 10^9.
        let pow = exp10 - scale + 9;
        let mut v = mantissa.checked_mul(base2).ok_or_else(|| bad("is too large"))?;
        if pow >= 0 {
            v = v.checked_mul(10i128.pow(pow as u32)).ok_or_else(|| bad("is too large"))?;
        } else {
            // Below a nano-unit: round up, as Kubernetes does.
            let d = 10i128.pow((-pow) as u32);
            v = (v + d - 1) / d;
        }
        Ok(Quantity(sign * v))
    }

    /// Whole units, rounded up (bytes for memory).
    pub fn value(self) -> i128 {
        (self.0 + NANO - 1).div_euclid(NANO)
    }

    /// Thousandths, rounded up (millicores for cpu).
    pub fn milli_value(self) -> i128 {
        let d = NANO / 1000;
        (self.0 + d - 1).div_euclid(d)
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }
}

/// Go's time.ParseDuration (`90s`, `5m`, `1h30m`, `500ms`): CronJob's `@every`, and
/// durations on the command line.
pub fn parse_go_duration(s: &str) -> Option<jiff::SignedDuration> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let secs = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * secs;
        rest = &rest[unit_end..];
    }
    Some(jiff::SignedDuration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_forms() {
        let cases: &[(&str, i128)] = &[
            ("500m", 500),
            ("1", 1000),
            ("0.5", 500),
            ("2.25", 2250),
            ("1k", 1_000_000),
            ("100n", 1),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("+3", 3000),
        ];
        for (s, milli) in cases {
            assert_eq!(Quantity::parse(s).unwrap().milli_value(), *milli, "{s}");
        }
        assert_eq!(Quantity::parse("128Mi").unwrap().value(), 128 << 20);
        assert_eq!(Quantity::parse("1.5Gi").unwrap().value(), 3 << 29);
        assert_eq!(Quantity::parse("1Ei").unwrap().value(), 1 << 60);
        assert!(Quantity::parse("-1").unwrap().is_negative());
        assert!(Quantity::parse("1Gi").unwrap() > Quantity::parse("1G").unwrap());
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "abc", "1.2.3", "5MB", "1 Gi", "Gi", ".", "1e99", "m"] {
            assert!(Quantity::parse(s).is_err(), "{s} should fail");
        }
    }
}
