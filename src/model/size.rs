//! Volume sizes as people type them (`500GiB`, `1.5TiB`, refused `500GB`).

use std::fmt;

use serde::Serialize;

use super::{Invalid, invalid, quoted};

/// A volume size, held in whole GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Size {
    gib: i64,
}

/// 1 PiB: far above any real volume, low enough that arithmetic never overflows.
const MAX_SIZE_GIB: i64 = 1024 * 1024;

const GIB: u128 = 1 << 30;

impl Size {
    /// Parses a size as people type it, units case-insensitive:
    /// binary units (`GiB`/`Gi`, `TiB`/`Ti`, `PiB`/`Pi`) are exact, and so
    /// are decimal fractions of them (`1.5TiB`); decimal units (`GB`/`G`,
    /// `TB`/`T`, `PB`/`P`, as in Kubernetes quantities) are converted
    /// exactly, and refused with the nearest whole-GiB sizes suggested when
    /// they are not a whole number of GiB (which, below 1 PiB, they never
    /// are). `GB` is never read as `GiB`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = |why: String| {
            invalid(format!(
                "invalid size {}: {why} (use a whole number of GiB or TiB, like 500GiB, 2TiB or 1.5TiB)",
                quoted(s)
            ))
        };
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || (number.contains('.') && frac.is_empty()) || frac.contains('.') {
            return Err(bad("expected a number such as 500 or 1.5".into()));
        }
        if frac.len() > 18 {
            return Err(bad("too many decimal places (at most 18)".into()));
        }
        // bytes per unit
        let per: u128 = match unit.to_ascii_lowercase().as_str() {
            "gib" | "gi" => GIB,
            "tib" | "ti" => GIB << 10,
            "pib" | "pi" => GIB << 20,
            "gb" | "g" => 1_000_000_000,
            "tb" | "t" => 1_000_000_000_000,
            "pb" | "p" => 1_000_000_000_000_000,
            "" => return Err(bad("no unit".into())),
            _ => return Err(bad(format!("unknown unit {}", quoted(unit)))),
        };
        let too_large = || bad("larger than 1024TiB".into());
        if whole.len() > 12 {
            return Err(too_large());
        }
        let scale = 10u128.pow(frac.len() as u32);
        let digits: u128 = format!("{whole}{frac}").parse().map_err(|_| too_large())?;
        // bytes = digits * per / scale, kept exact as a fraction.
        let numerator = digits.checked_mul(per).ok_or_else(too_large)?;
        if numerator == 0 {
            return Err(bad("must be more than zero".into()));
        }
        let denominator = scale * GIB;
        if numerator / denominator > MAX_SIZE_GIB as u128 {
            return Err(too_large());
        }
        if !numerator.is_multiple_of(denominator) {
            let gib = numerator as f64 / denominator as f64;
            let (down, up) = (gib.floor() as i64, gib.ceil() as i64);
            let hint = if down >= 1 {
                format!("use {up}GiB or {down}GiB")
            } else {
                format!("use {up}GiB")
            };
            return Err(invalid(format!(
                "invalid size {}: that is {gib:.2} GiB, and volumes are sized in whole GiB; {hint}",
                quoted(s)
            )));
        }
        let gib = numerator / denominator;
        if gib > MAX_SIZE_GIB as u128 {
            return Err(too_large());
        }
        Ok(Size { gib: gib as i64 })
    }

    pub fn from_gib(gib: i64) -> Self {
        Size { gib }
    }

    pub fn gib(self) -> i64 {
        self.gib
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.gib % 1024 == 0 {
            write!(f, "{}TiB", self.gib / 1024)
        } else {
            write!(f, "{}GiB", self.gib)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let gib = |s: &str| Size::parse(s).map(Size::gib);
        assert_eq!(gib("500GiB"), Ok(500));
        assert_eq!(gib("500gib"), Ok(500));
        assert_eq!(gib("500Gi"), Ok(500));
        assert_eq!(gib("2TiB"), Ok(2048));
        assert_eq!(gib("1.5TiB"), Ok(1536));
        assert_eq!(gib("0.5TiB"), Ok(512));
        assert_eq!(gib("1PiB"), Ok(1024 * 1024));
        assert_eq!(Size::parse("2TiB").unwrap().to_string(), "2TiB");
        // Decimal units are never read as binary; no decimal size below
        // 1 PiB is a whole number of GiB, so each is refused with a hint.
        let e = Size::parse("500GB").unwrap_err().0;
        assert!(e.contains("465.66 GiB") && e.contains("466GiB"), "{e}");
        let e = Size::parse("1TB").unwrap_err().0;
        assert!(e.contains("931.32 GiB") && e.contains("932GiB"), "{e}");
        assert!(Size::parse("500G").is_err());
        assert!(
            Size::parse("2PB")
                .unwrap_err()
                .0
                .contains("larger than 1024TiB")
        );
        let e = Size::parse("1.99999999999999GiB").unwrap_err().0;
        assert!(e.contains("use 2GiB or 1GiB"), "{e}");
        assert_eq!(gib("0.000976562500TiB"), Ok(1));
        assert!(Size::parse("1.5TB").is_err());
        for bad in [
            "",
            "0GiB",
            "0.0TiB",
            "-5GiB",
            "5",
            "5MiB",
            "GiB",
            "1.GiB",
            ".5TiB",
            "1..5TiB",
            "1.2.3TiB",
            "0.3GiB",
            "99999999999999999999GiB",
            "2000TiB",
            "1.0000000000000000001TiB",
            "2PB",
            "1.01PiB",
        ] {
            assert!(Size::parse(bad).is_err(), "{bad}");
        }
    }
}
