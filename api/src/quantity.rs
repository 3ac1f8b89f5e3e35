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

/// Go's time.ParseDuration (`90s`, `5m`, `1h30m`, `500ms`, `-1.5h`): CronJob's `@every`, and
/// durations on the command line. Like Go, a duration past ±2562047h47m16.854775807s (i64
/// nanoseconds) is invalid, so no caller ever computes with an overflowing one.
pub fn parse_go_duration(s: &str) -> Option<jiff::SignedDuration> {
    let (neg, mut rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(jiff::SignedDuration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    // Nanoseconds; i64::MAX + 1 is allowed until the sign is applied (Go's math.MinInt64).
    let limit: u128 = 1 << 63;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_end);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => a.split_at(a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len())),
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let unit: u128 = match &after[..unit_end] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let mut v: u128 = 0;
        for d in int.bytes() {
            v = v.checked_mul(10)?.checked_add(u128::from(d - b'0'))?;
            if v > limit {
                return None;
            }
        }
        let mut part = v.checked_mul(unit)?;
        // The fraction's digits beyond what a nanosecond can hold are dropped, as in Go.
        let mut scale = unit;
        for d in frac.bytes() {
            if scale < 10 {
                break;
            }
            scale /= 10;
            part += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(part)?;
        if total > limit {
            return None;
        }
        rest = &after[unit_end..];
    }
    let nanos = if neg { 0i128 - total as i128 } else { i64::try_from(total).ok()? as i128 };
    Some(jiff::SignedDuration::from_nanos(i64::try_from(nanos).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_go_and_overflow_is_invalid() {
        let d = |s| parse_go_duration(s).map(|d| d.as_nanos());
        assert_eq!(d("1h30m"), Some(5_400_000_000_000));
        assert_eq!(d("1.5h"), Some(5_400_000_000_000));
        assert_eq!(d("-90s"), Some(-90_000_000_000));
        assert_eq!(d("300ms"), Some(300_000_000));
        assert_eq!(d(".5s"), Some(500_000_000));
        assert_eq!(d("0"), Some(0));
        assert_eq!(d("2562047h47m16.854775807s"), Some(i64::MAX as i128));
        assert_eq!(d("-2562047h47m16.854775808s"), Some(i64::MIN as i128));
        for bad in [
            "",
            "1",
            "h",
            "1x",
            ".s",
            "banana",
            "2562047h47m16.854775808s",
            "100000000h",
            "99999999999999999999h",
            "1e3s",
            "1h-5m",
        ] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }

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
