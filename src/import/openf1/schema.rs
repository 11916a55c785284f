//! The JSON records of the OpenF1 v1 endpoints the importer reads, field for field as the API
//! documents them (fields the replay does not use are still named, so the fixtures and the
//! importer agree on one schema). `client` decodes responses into these; `build` reads them.
//!
//! Dates are ISO 8601 strings such as `2023-09-16T13:03:35.292000+00:00`; [`parse_date`]
//! turns them into seconds since the Unix epoch.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `/v1/meetings`: a Grand Prix or testing weekend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meeting {
    pub meeting_key: u32,
    pub meeting_name: Option<String>,
    pub meeting_official_name: Option<String>,
    pub circuit_key: Option<u32>,
    pub circuit_short_name: Option<String>,
    pub country_name: Option<String>,
    pub country_code: Option<String>,
    pub location: Option<String>,
    pub date_start: Option<String>,
    pub date_end: Option<String>,
    pub year: Option<i32>,
}

/// `/v1/sessions`: one practice, qualifying, sprint or race.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub session_key: u32,
    pub meeting_key: u32,
    pub session_name: Option<String>,
    pub session_type: Option<String>,
    pub circuit_key: Option<u32>,
    pub circuit_short_name: Option<String>,
    pub country_name: Option<String>,
    pub country_code: Option<String>,
    pub location: Option<String>,
    pub date_start: Option<String>,
    pub date_end: Option<String>,
    pub gmt_offset: Option<String>,
    pub year: Option<i32>,
}

/// `/v1/drivers`: who drove in the session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriverRecord {
    pub driver_number: u32,
    pub broadcast_name: Option<String>,
    pub full_name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub name_acronym: Option<String>,
    pub team_name: Option<String>,
    /// `RRGGBB`, without `#`.
    pub team_colour: Option<String>,
}

/// `/v1/location`: x, y, z at about 3.7 Hz, in the live-timing units (1/10 m).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Location {
    pub date: Option<String>,
    pub driver_number: u32,
    pub x: Option<f64>,
    pub y: Option<f64>,
    pub z: Option<f64>,
}

/// `/v1/car_data`: telemetry at about 3.7 Hz.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CarData {
    pub date: Option<String>,
    pub driver_number: u32,
    pub speed: Option<f64>,
    pub n_gear: Option<i64>,
    pub throttle: Option<f64>,
    /// 0 or 100.
    pub brake: Option<f64>,
    pub drs: Option<i64>,
    pub rpm: Option<f64>,
}

/// `/v1/laps`: one lap of one driver; `date_start` is approximate and may be null.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lap {
    pub driver_number: u32,
    pub lap_number: u32,
    pub date_start: Option<String>,
    pub lap_duration: Option<f64>,
    pub duration_sector_1: Option<f64>,
    pub duration_sector_2: Option<f64>,
    pub duration_sector_3: Option<f64>,
    pub is_pit_out_lap: Option<bool>,
}

/// `/v1/position`: a change of a driver's classification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Position {
    pub date: Option<String>,
    pub driver_number: u32,
    pub position: Option<u32>,
}

/// A gap as OpenF1 sends it: seconds, a text such as `+1 LAP`, or null (the leader).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Gap {
    Seconds(f64),
    Text(String),
}

impl Gap {
    /// Seconds, or the number of laps of a `+N LAP(S)` text.
    pub fn laps(&self) -> Option<u32> {
        match self {
            Gap::Seconds(_) => None,
            Gap::Text(s) => s
                .trim()
                .trim_start_matches('+')
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok()),
        }
    }
}

/// `/v1/intervals`: gaps about every 4 s, races only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Interval {
    pub date: Option<String>,
    pub driver_number: u32,
    pub gap_to_leader: Option<Gap>,
    pub interval: Option<Gap>,
}

/// `/v1/stints`: a run on one set of tyres.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stint {
    pub driver_number: u32,
    pub stint_number: Option<u32>,
    pub compound: Option<String>,
    pub lap_start: Option<u32>,
    pub lap_end: Option<u32>,
    pub tyre_age_at_start: Option<u32>,
}

/// `/v1/pit`: a pass through the pit lane. The live-timing feed reports it once the lane time
/// is known, so `date` is about when the car left the pit lane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pit {
    pub date: Option<String>,
    pub driver_number: u32,
    pub lap_number: Option<u32>,
    pub lane_duration: Option<f64>,
    pub pit_duration: Option<f64>,
    pub stop_duration: Option<f64>,
}

/// `/v1/race_control`: flags, safety car, session status and messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RaceControl {
    pub date: Option<String>,
    pub category: Option<String>,
    pub driver_number: Option<u32>,
    pub flag: Option<String>,
    pub lap_number: Option<u32>,
    pub message: Option<String>,
    pub scope: Option<String>,
    pub sector: Option<u32>,
}

/// `/v1/weather`: about once a minute.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Weather {
    pub date: Option<String>,
    pub air_temperature: Option<f64>,
    pub track_temperature: Option<f64>,
    pub humidity: Option<f64>,
    pub pressure: Option<f64>,
    pub rainfall: Option<f64>,
    pub wind_direction: Option<f64>,
    pub wind_speed: Option<f64>,
}

/// Seconds since the Unix epoch of an OpenF1 date (RFC 3339; a missing offset is UTC).
pub fn parse_date(s: &str) -> Option<f64> {
    let parsed = OffsetDateTime::parse(s, &Rfc3339).or_else(|_| {
        // Accept the offset-less form the API takes in filters, as UTC.
        OffsetDateTime::parse(&format!("{s}+00:00"), &Rfc3339)
    });
    parsed.ok().map(|d| d.unix_timestamp_nanos() as f64 / 1e9)
}

/// The form the importer uses in `date>=` filters and the fixtures use in records:
/// `2023-09-16T13:03:35.292000+00:00`.
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
            parse_date("2023-06-04T14:21:01+00:00").unwrap() as i64,
            1_685_888_461
        );
        assert_eq!(
            parse_date("2023-06-04T14:21:01"),
            parse_date("2023-06-04T14:21:01Z")
        );
        assert!(parse_date("yesterday").is_none());
    }

    #[test]
    fn gaps_decode_as_numbers_texts_or_null() {
        let rows: Vec<Interval> = serde_json::from_str(
            r#"[{"date":"2023-09-17T13:31:02.395000+00:00","driver_number":1,"gap_to_leader":41.019,"interval":0.003,"meeting_key":1219,"session_key":9165},
                {"date":"2023-09-17T13:31:02.395000+00:00","driver_number":2,"gap_to_leader":"+1 LAP","interval":"+2 LAPS","meeting_key":1219,"session_key":9165},
                {"date":"2023-09-17T13:31:02.395000+00:00","driver_number":3,"gap_to_leader":null,"interval":null,"meeting_key":1219,"session_key":9165}]"#,
        )
        .unwrap();
        assert_eq!(rows[0].gap_to_leader, Some(Gap::Seconds(41.019)));
        assert_eq!(rows[1].gap_to_leader.as_ref().unwrap().laps(), Some(1));
        assert_eq!(rows[1].interval.as_ref().unwrap().laps(), Some(2));
        assert_eq!(rows[2].gap_to_leader, None);
    }
}
