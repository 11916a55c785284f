//! OpenF1's date strings, which the generator writes into records and the server's `date>=` /
//! `date<` filters compare. The importer has its own reader (it does not depend on this crate);
//! the tests of the importer check that the two agree.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Seconds since the epoch of an RFC 3339 date, or of the offset-less form the API takes in
/// filters (read as UTC).
pub fn parse_date(s: &str) -> Option<f64> {
    let parsed = OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(&format!("{s}+00:00"), &Rfc3339));
    parsed.ok().map(|d| d.unix_timestamp_nanos() as f64 / 1e9)
}

/// The form the API writes: `2023-09-16T13:03:35.292000+00:00`.
pub fn format_date(epoch_s: f64) -> String {
    let nanos = (epoch_s * 1e6).round() as i128 * 1000;
    let d = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_in_the_api_format() {
        let t = parse_date("2023-09-16T13:03:35.292000+00:00").unwrap();
        assert_eq!(format_date(t), "2023-09-16T13:03:35.292000+00:00");
        assert_eq!(
            parse_date("2023-06-04T14:21:01").map(|t| t as i64),
            Some(1_685_888_461)
        );
        assert_eq!(parse_date("not a date"), None);
    }
}
