//! Serde for the integers of request bodies as JSON Schema counts them: `3` and `3.0` are the
//! same integer (a number with no fractional part), so the API takes both where its document
//! says `integer`. Anything with a fraction, or out of the field's range, is refused naming
//! the field (422).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A whole number of type `T` (`#[serde(deserialize_with = "crate::whole::number")]`).
pub(crate) fn number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128>,
{
    let number = serde_json::Number::deserialize(deserializer)?;
    let whole: i128 = if let Some(value) = number.as_i64() {
        value.into()
    } else if let Some(value) = number.as_u64() {
        value.into()
    } else {
        let value = number.as_f64().unwrap_or(f64::NAN);
        // Past 2^64 a float names no integer exactly: out of every field's range anyway.
        if value.fract() != 0.0 || !value.is_finite() || value.abs() >= 18_446_744_073_709_551_616.0
        {
            return Err(D::Error::custom(format!("{number} is not a whole number")));
        }
        value as i128
    };
    T::try_from(whole).map_err(|_| D::Error::custom(format!("{whole} is out of range")))
}

/// Like [`number`] for an optional field (with `#[serde(default)]`): `null` is `None`.
pub(crate) fn optional<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128>,
{
    #[derive(Deserialize)]
    struct Whole<T: TryFrom<i128>>(#[serde(deserialize_with = "number")] T);
    Option::<Whole<T>>::deserialize(deserializer).map(|value| value.map(|Whole(inner)| inner))
}
