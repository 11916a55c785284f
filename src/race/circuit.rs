//! Real circuit outlines, embedded in the binary so the hub needs no network and no files.
//!
//! The GeoJSON under `circuits/` (bacinger/f1-circuits, MIT; see circuits/SOURCE.md) gives each
//! circuit as a line of longitude/latitude points. [`load`] parses one with serde_json, projects
//! it to metres, closes, smooths and resamples it evenly, and measures its curvature and its
//! outward normals, from which the generator (`generate`) derives corner speeds, straights, DRS
//! zones and the track's inner and outer edges.

use serde::Deserialize;

/// The circuit of the demo race.
pub const DEFAULT_CIRCUIT: &str = "it-1922";

/// Id and GeoJSON text of every circuit shipped in the binary.
const EMBEDDED: [(&str, &str); 6] = [
    ("be-1925", include_str!("../../circuits/be-1925.geojson")),
    ("bh-2002", include_str!("../../circuits/bh-2002.geojson")),
    ("gb-1948", include_str!("../../circuits/gb-1948.geojson")),
    ("hu-1986", include_str!("../../circuits/hu-1986.geojson")),
    ("it-1922", include_str!("../../circuits/it-1922.geojson")),
    ("mc-1929", include_str!("../../circuits/mc-1929.geojson")),
];

/// Spacing of the resampled outline, metres.
pub const SPACING: f64 = 1.0;
/// Standard deviation of the smoothing, metres: irons out the corners of the source polyline
/// (its points are 5 to 300 m apart) without widening real corners much.
const SMOOTH_SIGMA: f64 = 8.0;
/// Half the chord over which curvature is measured, metres.
const CURVATURE_HALF_CHORD: f64 = 15.0;
/// Mean Earth radius, metres.
const EARTH_RADIUS: f64 = 6_371_008.8;
/// Most points read from a GeoJSON line; the shipped outlines have under 200.
const MAX_SOURCE_POINTS: usize = 100_000;

/// A closed circuit centreline in metres, evenly spaced, from the start/finish line in the
/// data's direction of travel.
#[derive(Debug, Clone, PartialEq)]
pub struct Outline {
    pub id: String,
    pub name: String,
    pub location: String,
    /// Lap length the data states, metres.
    pub official_length_m: f64,
    /// `n` points `spacing` apart; the loop closes from the last back to the first.
    pub points: Vec<[f64; 2]>,
    /// Unit normal at each point, pointing out of the loop.
    pub normals: Vec<[f64; 2]>,
    /// Unsigned curvature (1 / radius, 1/m) at each point.
    pub curvature: Vec<f64>,
    pub spacing: f64,
    /// Lap length of the resampled outline, metres.
    pub length: f64,
}

#[derive(thiserror::Error, Debug)]
pub enum CircuitError {
    #[error("no built-in circuit {id:?}; the circuits are: {}", ids().collect::<Vec<_>>().join(", "))]
    Unknown { id: String },
    #[error("circuit GeoJSON does not parse: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("circuit GeoJSON is not a usable outline: {0}")]
    Shape(String),
}

/// Ids of the built-in circuits, sorted.
pub fn ids() -> impl Iterator<Item = &'static str> {
    EMBEDDED.iter().map(|(id, _)| *id)
}

/// A built-in circuit, processed.
pub fn load(id: &str) -> Result<Outline, CircuitError> {
    let (_, text) = EMBEDDED
        .iter()
        .find(|(known, _)| *known == id)
        .ok_or_else(|| CircuitError::Unknown { id: id.into() })?;
    parse(text)
}

#[derive(Deserialize)]
struct Collection {
    features: Vec<Feature>,
}

#[derive(Deserialize)]
struct Feature {
    properties: Properties,
    geometry: Geometry,
}

#[derive(Deserialize)]
struct Properties {
    id: String,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Location")]
    location: String,
    length: f64,
}

#[derive(Deserialize)]
#[serde(tag = "type")]
enum Geometry {
    LineString { coordinates: Vec<Vec<f64>> },
}

/// Parses a FeatureCollection holding one circuit LineString (the f1-circuits layout).
pub fn parse(geojson: &str) -> Result<Outline, CircuitError> {
    let collection: Collection = serde_json::from_str(geojson)?;
    let shape = |m: &str| CircuitError::Shape(m.into());
    let feature = collection
        .features
        .into_iter()
        .next()
        .ok_or_else(|| shape("no feature"))?;
    let Geometry::LineString { coordinates } = feature.geometry;
    if coordinates.len() > MAX_SOURCE_POINTS {
        return Err(shape("too many points"));
    }
    let lon_lat: Vec<[f64; 2]> = coordinates
        .iter()
        .map(|c| match c[..] {
            [lon, lat, ..] if lon.is_finite() && lat.is_finite() && lat.abs() < 85.0 => {
                Ok([lon, lat])
            }
            _ => Err(shape("a point is not [longitude, latitude]")),
        })
        .collect::<Result<_, _>>()?;
    let source = project(&lon_lat);
    let closed = closed_loop(&source);
    if closed.len() < 8 {
        return Err(shape("fewer than 8 distinct points"));
    }
    let coarse = resample(&closed, SPACING);
    let sigma = (SMOOTH_SIGMA / SPACING).round() as usize;
    let points = resample(&smooth(&coarse, sigma), SPACING);
    let n = points.len();
    let length = perimeter(&points);
    if !(1000.0..=20_000.0).contains(&length) {
        return Err(shape("lap length is not that of a race circuit"));
    }
    let spacing = length / n as f64;
    let h = ((CURVATURE_HALF_CHORD / spacing).round() as usize).max(1);
    let raw: Vec<f64> = (0..n)
        .map(|i| menger(points[(i + n - h) % n], points[i], points[(i + h) % n]))
        .collect();
    let curvature = box_filter(&raw, h);
    // Right-hand normals point out of a counter-clockwise loop; flip them for a clockwise one.
    let area: f64 = (0..n)
        .map(|i| {
            let (a, b) = (points[i], points[(i + 1) % n]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum();
    let flip = if area < 0.0 { -1.0 } else { 1.0 };
    let normals = (0..n)
        .map(|i| {
            let (a, b) = (points[(i + n - 1) % n], points[(i + 1) % n]);
            let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
            let len = dx.hypot(dy).max(1e-9);
            [flip * dy / len, -flip * dx / len]
        })
        .collect();
    Ok(Outline {
        id: feature.properties.id,
        name: feature.properties.name,
        location: feature.properties.location,
        official_length_m: feature.properties.length,
        points: centred(points),
        normals,
        curvature,
        spacing,
        length,
    })
}

/// Equirectangular projection about the points' mean: under 0.1 % error over a few km.
fn project(lon_lat: &[[f64; 2]]) -> Vec<[f64; 2]> {
    let n = lon_lat.len().max(1) as f64;
    let lon0 = lon_lat.iter().map(|p| p[0]).sum::<f64>() / n;
    let lat0 = lon_lat.iter().map(|p| p[1]).sum::<f64>() / n;
    let k = EARTH_RADIUS * std::f64::consts::PI / 180.0;
    let kx = k * lat0.to_radians().cos();
    lon_lat
        .iter()
        .map(|p| [(p[0] - lon0) * kx, (p[1] - lat0) * k])
        .collect()
}

/// Drops repeated points and the closing point, so the loop is implied from last to first.
fn closed_loop(points: &[[f64; 2]]) -> Vec<[f64; 2]> {
    let mut out: Vec<[f64; 2]> = Vec::with_capacity(points.len());
    for &p in points {
        if out.last().is_none_or(|q| dist(*q, p) > 0.01) {
            out.push(p);
        }
    }
    while out.len() > 1 && dist(out[0], out[out.len() - 1]) < 0.5 {
        out.pop();
    }
    out
}

fn dist(a: [f64; 2], b: [f64; 2]) -> f64 {
    (b[0] - a[0]).hypot(b[1] - a[1])
}

fn perimeter(points: &[[f64; 2]]) -> f64 {
    let n = points.len();
    (0..n).map(|i| dist(points[i], points[(i + 1) % n])).sum()
}

/// Evenly spaced points along the closed polyline, starting at its first point.
fn resample(points: &[[f64; 2]], spacing: f64) -> Vec<[f64; 2]> {
    let n = points.len();
    let total = perimeter(points);
    let count = ((total / spacing).round() as usize).max(3);
    let step = total / count as f64;
    let mut out = Vec::with_capacity(count);
    let (mut seg, mut seg_start) = (0usize, 0.0f64);
    for k in 0..count {
        let s = k as f64 * step;
        loop {
            let len = dist(points[seg], points[(seg + 1) % n]);
            if s <= seg_start + len || seg + 1 == n {
                let f = if len > 0.0 {
                    ((s - seg_start) / len).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (a, b) = (points[seg], points[(seg + 1) % n]);
                out.push([a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f]);
                break;
            }
            seg_start += len;
            seg += 1;
        }
    }
    out
}

/// Three passes of a periodic moving average (close to a Gaussian of `sigma` samples).
fn smooth(points: &[[f64; 2]], sigma: usize) -> Vec<[f64; 2]> {
    // Three boxes of half-width r have the variance of a Gaussian with sigma² = r (r + 1).
    let r = sigma;
    let mut xs: Vec<f64> = points.iter().map(|p| p[0]).collect();
    let mut ys: Vec<f64> = points.iter().map(|p| p[1]).collect();
    for _ in 0..3 {
        xs = box_filter(&xs, r);
        ys = box_filter(&ys, r);
    }
    xs.into_iter().zip(ys).map(|(x, y)| [x, y]).collect()
}

/// Periodic moving average over `2 r + 1` samples.
fn box_filter(values: &[f64], r: usize) -> Vec<f64> {
    let n = values.len();
    let width = (2 * r + 1) as f64;
    let mut sum: f64 = (0..=2 * r).map(|k| values[(k + n - r % n) % n]).sum();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(sum / width);
        sum += values[(i + r + 1) % n] - values[(i + n - r % n) % n];
    }
    out
}

/// Curvature of the circle through three points (0 when they are in line).
fn menger(a: [f64; 2], b: [f64; 2], c: [f64; 2]) -> f64 {
    let cross = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]);
    let denom = dist(a, b) * dist(b, c) * dist(a, c);
    if denom <= 0.0 {
        0.0
    } else {
        2.0 * cross.abs() / denom
    }
}

/// Moves the outline so its bounding box is centred on (0, 0), as generated tracks are.
fn centred(mut points: Vec<[f64; 2]>) -> Vec<[f64; 2]> {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in &points {
        (x0, x1, y0, y1) = (x0.min(p[0]), x1.max(p[0]), y0.min(p[1]), y1.max(p[1]));
    }
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    for p in &mut points {
        p[0] -= cx;
        p[1] -= cy;
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_circuit_loads_at_its_real_length() {
        let ids: Vec<&str> = ids().collect();
        assert!(ids.contains(&DEFAULT_CIRCUIT));
        for id in ids {
            let o = load(id).unwrap();
            assert_eq!(o.id, id);
            let n = o.points.len();
            assert_eq!((o.normals.len(), o.curvature.len()), (n, n));
            // Smoothing cuts corners by a few metres a lap, no more.
            let off = (o.length - o.official_length_m).abs() / o.official_length_m;
            assert!(
                off < 0.02,
                "{id}: {} m against {} m",
                o.length,
                o.official_length_m
            );
            // Evenly spaced, closed: no step longer than the spacing, including the last one.
            for i in 0..n {
                let d = dist(o.points[i], o.points[(i + 1) % n]);
                assert!((d - o.spacing).abs() < 0.05, "{id}: step {d} at {i}");
            }
            // Normals are unit length and point out of the loop: a step along one moves away
            // from the centre of the bounding box on average.
            let outward: f64 = (0..n)
                .map(|i| {
                    let (p, q) = (o.points[i], o.normals[i]);
                    assert!((q[0].hypot(q[1]) - 1.0).abs() < 1e-9);
                    p[0] * q[0] + p[1] * q[1]
                })
                .sum();
            assert!(outward > 0.0, "{id}: normals point inwards");
            // Real corners: the tightest is a hairpin or chicane of 10 to 60 m radius.
            let tightest = 1.0 / o.curvature.iter().copied().fold(0.0, f64::max);
            assert!(
                (8.0..=60.0).contains(&tightest),
                "{id}: tightest radius {tightest} m"
            );
        }
    }

    #[test]
    fn monza_has_its_long_straights_and_its_chicanes() {
        let o = load("it-1922").unwrap();
        assert_eq!(o.name, "Autodromo Nazionale Monza");
        // The start/finish straight: no corner in the first 500 m.
        let first = (500.0 / o.spacing) as usize;
        let max_k = o.curvature[..first].iter().copied().fold(0.0, f64::max);
        assert!(max_k < 1.0 / 400.0, "radius {} m", 1.0 / max_k);
        // The first chicane follows it: a corner tighter than 40 m within the next 600 m.
        let chicane = o.curvature[first..first + 600]
            .iter()
            .copied()
            .fold(0.0, f64::max);
        assert!(chicane > 1.0 / 40.0, "radius {} m", 1.0 / chicane);
    }

    #[test]
    fn bad_geojson_is_a_clear_error() {
        let err = load("xx-0000").unwrap_err();
        assert!(err.to_string().contains("it-1922"), "{err}");
        assert!(matches!(parse("{").unwrap_err(), CircuitError::Parse(_)));
        let point = r#"{"features":[{"properties":{"id":"x","Name":"x","Location":"x","length":1},
            "geometry":{"type":"LineString","coordinates":[[0,0],[0,0.001],[0.001,0]]}}]}"#;
        assert!(matches!(parse(point).unwrap_err(), CircuitError::Shape(_)));
        let text = r#"{"features":[{"properties":{"id":"x","Name":"x","Location":"x","length":1},
            "geometry":{"type":"LineString","coordinates":[[0,"a"]]}}]}"#;
        assert!(parse(text).is_err());
    }
}
