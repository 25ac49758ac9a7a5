//! `JsonBody`: a JSON request body, with rejections in the API's error format.
//!
//! A number written with a zero fraction (`220.0`) is an integer to JSON Schema, and so to the
//! served contract: it is taken as the integer wherever the request has an integer field. Record
//! `data` and a dataset's `schema` are the caller's own content and are kept exactly as sent.

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::{Number, Value};

use super::error::ApiError;

/// A JSON request body; malformed or oversized bodies become [`ApiError`]s.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(mut value) = axum::Json::<Value>::from_request(req, state).await?;
        if !value.is_object() {
            // Serde would take an array for a struct of optional fields.
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        integral(&mut value);
        serde_path_to_error::deserialize(value)
            .map(JsonBody)
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "Failed to deserialize the JSON body into the target type: {e}"
                ))
            })
    }
}

/// Turns numbers with a zero fraction into integers, outside the caller's own content.
fn integral(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_f64().and_then(as_integer) {
                *n = i;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral),
        Value::Object(fields) => {
            for (k, v) in fields.iter_mut() {
                if k != "data" && k != "schema" {
                    integral(v);
                }
            }
        }
        _ => {}
    }
}

/// `f` as an integer JSON number, if it is one exactly (and not already written as one).
fn as_integer(f: f64) -> Option<Number> {
    if f.fract() != 0.0 || !f.is_finite() {
        return None;
    }
    // `u64::MAX as f64` is 2^64, one past the largest u64: excluded, or it would saturate.
    if (0.0..u64::MAX as f64).contains(&f) {
        Some(Number::from(f as u64))
    } else if (i64::MIN as f64..0.0).contains(&f) {
        Some(Number::from(f as i64))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::integral;

    #[test]
    fn integral_floats_become_integers_outside_data_and_schema() {
        let mut v = json!({"ttl_secs": 220.0, "limit": 1.5, "records": [{"time": 5.0,
            "data": {"temp": 37.0}}], "schema": {"max": 2.0}, "n": -3.0, "big": 1e300});
        integral(&mut v);
        assert_eq!(v["ttl_secs"], json!(220));
        assert!(v["ttl_secs"].is_u64());
        assert_eq!(v["limit"], json!(1.5));
        assert!(v["records"][0]["time"].is_u64());
        assert!(
            v["records"][0]["data"]["temp"].is_f64(),
            "data kept as sent"
        );
        assert!(v["schema"]["max"].is_f64(), "schema kept as sent");
        assert!(v["n"].is_i64());
        assert!(v["big"].is_f64());
        let mut past = json!({"until": 18446744073709551616.0});
        integral(&mut past);
        assert!(
            past["until"].is_f64(),
            "2^64 is no u64: refused, not saturated"
        );
    }
}
