#!/usr/bin/env python3
"""Export a FastF1 session as a replay-hub race file (docs/RACE_FORMAT.md, version 1).

    python tools/fastf1_export.py 2024 Monza R --out data/monza-2024.race [--id monza-2024]

`export(session, path, race_id)` converts any loaded `fastf1.core.Session` (laps, telemetry,
weather and messages loaded); it reads only FastF1's documented attributes: `results`,
`laps`, `pos_data`, `car_data`, `track_status`, `race_control_messages`, `weather_data`,
`event`, `name`. Position data is in 1/10 m; the race file is in metres.
"""

import argparse
import re
import struct
import sys
import zlib

import msgpack
import numpy as np
import pandas as pd

FPS = 25
LEAD_S = 5.0
HALF_WIDTH_M = 7.5
FIELDS = ["x", "y", "speed", "gear", "throttle", "brake", "drs", "lap", "position",
          "tyre", "dist", "rel_dist", "gap_to_leader", "gap_to_previous", "status"]
TYRES = {"SOFT": 0, "MEDIUM": 1, "HARD": 2, "INTERMEDIATE": 3, "WET": 4}
# FastF1 track_status codes.
TRACK_STATUS = {"1": "green", "2": "yellow", "4": "safety_car", "5": "red",
                "6": "virtual_safety_car", "7": "virtual_safety_car"}
RUNNING, PIT, RETIRED, FINISHED = 0, 1, 2, 3


def seconds(values):
    """Session times (timedelta) as float seconds; NaT becomes NaN."""
    return pd.to_timedelta(pd.Series(values)).dt.total_seconds().to_numpy(dtype=float)


def write_race(path, meta, frames):
    """The writer of docs/RACE_FORMAT.md: header, metadata, frames, checksummed trailer."""
    meta_bytes = msgpack.packb(meta)
    total = meta[4]
    crc = 0
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        def put(b):
            nonlocal crc
            crc = zlib.crc32(b, crc)
            f.write(b)

        put(b"F1REPLAY" + struct.pack(">HI", 1, len(meta_bytes)))
        put(meta_bytes)
        put(b"\xdd" + struct.pack(">I", total))
        packer = msgpack.Packer(use_single_float=True)
        count = 0
        for frame in frames:
            put(packer.pack(frame))
            count += 1
        if count != total:
            raise ValueError(f"wrote {count} frames but meta says {total}")
        f.write(b"F1RPLEND" + struct.pack(">II", count, crc))
    import os
    os.replace(tmp, path)


def step(ts, times, values, default):
    """The last value at or before each of `ts` (stepwise)."""
    if len(times) == 0:
        return np.full(len(ts), default)
    idx = np.searchsorted(times, ts, side="right") - 1
    out = np.asarray(values)[np.clip(idx, 0, None)]
    return np.where(idx < 0, default, out)


def outline_from(xs, ys, spacing=5.0):
    """A closed, evenly resampled, lightly smoothed centreline from a lap trace (metres)."""
    pts = np.column_stack([xs, ys])
    keep = np.r_[True, np.hypot(*np.diff(pts, axis=0).T) > 0.01]
    pts = pts[keep]
    pts = np.vstack([pts, pts[:1]])
    seg = np.hypot(*np.diff(pts, axis=0).T)
    cum = np.r_[0.0, np.cumsum(seg)]
    n = int(np.clip(round(cum[-1] / spacing), 64, 8192))
    s = np.linspace(0.0, cum[-1], n, endpoint=False)
    even = np.column_stack([np.interp(s, cum, pts[:, 0]), np.interp(s, cum, pts[:, 1])])
    for _ in range(2):
        smooth = sum(np.roll(even, k, axis=0) for k in range(-2, 3)) / 5.0
        smooth[0] = even[0]
        even = smooth
    return np.vstack([even, even[:1]])


def track_of(centre, sector_at):
    x, y = centre[:, 0], centre[:, 1]
    d = np.gradient(centre, axis=0)
    d /= np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)[:, None]
    left = np.column_stack([-d[:, 1], d[:, 0]])
    area = 0.5 * np.sum(x[:-1] * y[1:] - x[1:] * y[:-1])
    inside = 1.0 if area >= 0 else -1.0
    inner = centre + inside * HALF_WIDTH_M * left
    outer = centre - inside * HALF_WIDTH_M * left
    cum = np.r_[0.0, np.cumsum(np.hypot(*np.diff(centre, axis=0).T))]
    length = float(cum[-1])
    sector = np.where(cum < sector_at[0], 1, np.where(cum < sector_at[1], 2, 3)).astype(int)
    sector[-1] = 1
    return length, inner, outer, sector


def export(session, path, race_id, name=None):
    """Writes `session` to `path` as a race file; returns a one-line summary."""
    if not re.fullmatch(r"[a-z0-9_-]{1,64}", race_id):
        raise ValueError(f"invalid race id {race_id!r}: use 1 to 64 of a-z, 0-9, '-', '_'")
    laps = session.laps.copy()
    laps["DriverNumber"] = laps["DriverNumber"].astype(str)
    laps["start"] = seconds(laps["LapStartTime"])
    laps["end"] = seconds(laps["Time"])
    laps["LapNumber"] = laps["LapNumber"].astype(float)
    results = session.results.copy()
    results["DriverNumber"] = results["DriverNumber"].astype(str)
    order = results.sort_values("GridPosition" if "GridPosition" in results else "Position")
    numbers = [n for n in order["DriverNumber"] if n in session.pos_data and len(session.pos_data[n])]
    if not numbers:
        raise ValueError("no driver has position data")

    lights_out = np.nanmin(laps.loc[laps["LapNumber"] == 1, "start"])
    t0 = lights_out - LEAD_S
    t_end = np.nanmax(laps["end"]) + LEAD_S
    total_laps = int(np.nanmax(laps["LapNumber"]))
    flag_t = np.nanmin(laps.loc[laps["LapNumber"] == total_laps, "end"])
    total = int(np.floor((t_end - t0) * FPS)) + 1
    ts = t0 + np.arange(total) / FPS

    # Track outline: the fastest lap's position trace.
    timed = laps.dropna(subset=["LapTime", "start"])
    fastest = timed.loc[seconds(timed["LapTime"]).argmin()]
    pos = session.pos_data[fastest["DriverNumber"]]
    pt = seconds(pos["SessionTime"])
    lap_t = seconds([fastest["LapTime"]])[0]
    inside = (pt >= fastest["start"]) & (pt <= fastest["start"] + lap_t)
    centre = outline_from(pos["X"].to_numpy(float)[inside] / 10.0, pos["Y"].to_numpy(float)[inside] / 10.0)
    s1 = seconds([fastest.get("Sector1Time", pd.NaT)])[0]
    s2 = seconds([fastest.get("Sector2Time", pd.NaT)])[0]
    length_guess = float(np.sum(np.hypot(*np.diff(centre, axis=0).T)))
    if np.isfinite(s1) and np.isfinite(s2):
        sector_at = (length_guess * s1 / lap_t, length_guess * (s1 + s2) / lap_t)
    else:
        sector_at = (length_guess / 3.0, 2.0 * length_guess / 3.0)
    length, inner, outer, sector = track_of(centre, sector_at)

    cars = []
    xs_all, ys_all = [], []
    for num in numbers:
        pos = session.pos_data[num]
        car = session.car_data.get(num)
        pt = seconds(pos["SessionTime"])
        px, py = pos["X"].to_numpy(float) / 10.0, pos["Y"].to_numpy(float) / 10.0
        ok = np.isfinite(pt) & np.isfinite(px) & np.isfinite(py) & ~((px == 0) & (py == 0))
        pt, px, py = pt[ok], px[ok], py[ok]
        x, y = np.interp(ts, pt, px), np.interp(ts, pt, py)
        xs_all.append(x)
        ys_all.append(y)
        if car is not None and len(car):
            ct = seconds(car["SessionTime"])
            speed = np.interp(ts, ct, car["Speed"].to_numpy(float))
            throttle = np.clip(np.interp(ts, ct, car["Throttle"].to_numpy(float)), 0, 100)
            gear = step(ts, ct, np.clip(car["nGear"].to_numpy(int), 0, 8), 0)
            drs_raw = car["DRS"].to_numpy(int)
            drs = step(ts, ct, np.where(np.isin(drs_raw, [10, 12, 14]), 12, np.where(drs_raw == 8, 8, 0)), 0)
            brake = step(ts, ct, car["Brake"].astype(bool).to_numpy().astype(float), 0.0)
            moving = ct[car["Speed"].to_numpy(float) > 10]
            last_moving = moving.max() if len(moving) else pt.max()
        else:
            speed = throttle = brake = np.zeros(total)
            gear = drs = np.zeros(total, dtype=int)
            last_moving = pt.max()
        mine = laps[laps["DriverNumber"] == num].sort_values("LapNumber")
        starts = mine["start"].to_numpy(float)
        ends = mine["end"].to_numpy(float)
        numbers_l = mine["LapNumber"].to_numpy(float).astype(int)
        good = np.isfinite(starts)
        lap_idx = np.searchsorted(starts[good], ts, side="right") - 1
        lap_no = np.where(lap_idx >= 0, numbers_l[good][np.clip(lap_idx, 0, None)], 1)
        dur = (ends - starts)[good]
        frac = np.where(lap_idx >= 0,
                        (ts - starts[good][np.clip(lap_idx, 0, None)]) / dur[np.clip(lap_idx, 0, None)],
                        -(lights_out - ts) / np.nanmedian(dur))
        frac = np.clip(frac, -1.0, 0.999)
        dist = np.where(lap_idx >= 0, (lap_no - 1 + frac) * length, frac * length)
        rel = np.where(lap_idx >= 0, frac, 0.0)
        official = step(ts, ends, mine["Position"].fillna(99).to_numpy(float), 99.0)
        compounds = [TYRES.get(str(c).upper(), -1) for c in mine["Compound"][good]]
        # On the grid, the tyre of lap 1.
        tyre = step(ts, starts[good], compounds, compounds[0] if compounds else -1)
        # Pit lane: from PitInTime (end of lap n) to PitOutTime (start of lap n + 1).
        pit_in = seconds(mine["PitInTime"])
        pit_out = seconds(mine["PitOutTime"])
        in_pit = np.zeros(total, dtype=bool)
        for a in pit_in[np.isfinite(pit_in)]:
            later = pit_out[np.isfinite(pit_out) & (pit_out > a)]
            b = later.min() if len(later) else a + 25.0
            in_pit |= (ts >= a) & (ts <= b)
        finished_at = ends[np.isfinite(ends) & (ends >= flag_t - 0.5)]
        finish_t = finished_at.min() if len(finished_at) else None
        retire_t = None if finish_t is not None else min(last_moving, np.nanmax(ends) if len(ends) else last_moving)
        status = np.where(in_pit, PIT, RUNNING)
        if finish_t is not None:
            status = np.where(ts >= finish_t, FINISHED, status)
        if retire_t is not None:
            status = np.where(ts >= retire_t, RETIRED, status)
            stopped = ts >= retire_t
            hold = np.searchsorted(ts, retire_t)
            x[stopped], y[stopped] = x[min(hold, total - 1)], y[min(hold, total - 1)]
            speed = np.where(stopped, 0.0, speed)
            throttle = np.where(stopped, 0.0, throttle)
            gear = np.where(stopped, 0, gear)
        laps_done = numbers_l[np.isfinite(ends) & (ends <= (finish_t if finish_t is not None else np.inf))]
        lap_no = np.where(status == FINISHED, laps_done.max() if len(laps_done) else 1, np.minimum(lap_no, total_laps))
        row = results[results["DriverNumber"] == num].iloc[0]
        colour = str(row.get("TeamColor", "808080") or "808080").lstrip("#")
        try:
            rgb = [int(colour[i:i + 2], 16) for i in (0, 2, 4)]
        except ValueError:
            rgb = [128, 128, 128]
        cars.append(dict(
            driver=[str(row["Abbreviation"]).upper()[:3], int(num), str(row.get("TeamName", "Unknown")), rgb],
            x=x, y=y, speed=speed, gear=gear, throttle=throttle, brake=brake, drs=drs, lap=lap_no,
            tyre=tyre, dist=dist, rel=rel, official=official, status=status))

    # Classification, and gaps as the time since the leader passed the same distance.
    n = len(cars)
    dist = np.array([c["dist"] for c in cars])
    retired = np.array([c["status"] == RETIRED for c in cars])
    official = np.array([c["official"] for c in cars])
    ranks = np.zeros((n, total), dtype=int)
    for k in range(total):
        order = np.lexsort((-dist[:, k], official[:, k], retired[:, k]))
        ranks[order, k] = np.arange(1, n + 1)
    leader_dist = np.array([dist[np.argmin(ranks[:, k]), k] for k in range(total)])
    leader_dist = np.maximum.accumulate(leader_dist)
    gap = np.clip(ts[None, :] - np.array([np.interp(d, leader_dist, ts) for d in dist]), 0, None)
    gap[ranks == 1] = 0.0
    gap[retired] = 0.0

    def frames():
        for k in range(total):
            order = np.argsort(ranks[:, k])
            prev_gap = {int(order[j]): float(gap[order[j - 1], k]) if j else 0.0 for j in range(n)}
            drivers = []
            for i, c in enumerate(cars):
                g = float(gap[i, k])
                drivers.append([
                    float(c["x"][k]), float(c["y"][k]), float(c["speed"][k]), int(c["gear"][k]),
                    float(c["throttle"][k]), float(c["brake"][k]), int(c["drs"][k]), int(max(c["lap"][k], 1)),
                    int(ranks[i, k]), int(c["tyre"][k]), float(c["dist"][k]), float(min(max(c["rel"][k], 0.0), 0.999999)),
                    g, max(g - prev_gap[i], 0.0) if ranks[i, k] > 1 and not retired[i, k] else 0.0, int(c["status"][k]),
                ])
            leader = int(np.argmin(ranks[:, k]))
            yield [float(ts[k] - t0), int(max(cars[leader]["lap"][k], 1)), drivers]

    # Track status intervals covering the replay.
    last_t = (total - 1) / FPS
    intervals = []
    status_df = getattr(session, "track_status", None)
    changes = [(0.0, "green")]
    if status_df is not None and len(status_df):
        for t, code in zip(seconds(status_df["Time"]) - t0, status_df["Status"].astype(str)):
            changes.append((float(min(max(t, 0.0), last_t)), TRACK_STATUS.get(code, "green")))
    for t, s in changes:
        if intervals and intervals[-1][0] == s:
            continue
        if intervals and intervals[-1][1] >= t:
            intervals[-1][0] = s
            continue
        if intervals:
            intervals[-1][2] = t
        intervals.append([s, t, last_t])
    merged = []
    for iv in intervals:
        if merged and merged[-1][0] == iv[0]:
            merged[-1][2] = iv[2]
        else:
            merged.append(iv)

    all_x = np.concatenate([np.concatenate(xs_all), inner[:, 0], outer[:, 0]])
    all_y = np.concatenate([np.concatenate(ys_all), inner[:, 1], outer[:, 1]])
    bounds = [float(all_x.min() - 20), float(all_x.max() + 20), float(all_y.min() - 20), float(all_y.max() + 20)]
    track = [float(length), [float(v) for v in centre[:, 0]], [float(v) for v in centre[:, 1]],
             [float(v) for v in inner[:, 0]], [float(v) for v in inner[:, 1]],
             [float(v) for v in outer[:, 0]], [float(v) for v in outer[:, 1]],
             [int(s) for s in sector], bounds]
    event = getattr(session, "event", None)
    title = name or " ".join(str(p) for p in [
        event.get("EventName", "") if event is not None else "", getattr(session, "name", "")] if p).strip() or race_id
    meta = [race_id, title, int(total_laps), FPS, int(total), FIELDS, track,
            [c["driver"] for c in cars], [[s, float(a), float(b)] for s, a, b in merged]]
    write_race(path, meta, frames())
    messages = getattr(session, "race_control_messages", None)
    weather = getattr(session, "weather_data", None)
    return (f"wrote {path}: {n} cars, {total_laps} laps, {total} frames, track {length:.0f} m, "
            f"{0 if messages is None else len(messages)} race-control messages, "
            f"{0 if weather is None else len(weather)} weather samples")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("year", type=int)
    parser.add_argument("event", help="event name or round, as fastf1.get_session takes it")
    parser.add_argument("session", help="R, S, Q, FP1, ...")
    parser.add_argument("--out", required=True, help="race file to write")
    parser.add_argument("--id", help="race id (default: the output file's stem)")
    parser.add_argument("--cache", default=None, help="FastF1 cache directory")
    args = parser.parse_args(argv)
    import fastf1  # only needed here: export() works on any session-shaped object

    if args.cache:
        fastf1.Cache.enable_cache(args.cache)
    session = fastf1.get_session(args.year, args.event, args.session)
    session.load(laps=True, telemetry=True, weather=True, messages=True)
    import pathlib
    race_id = args.id or re.sub(r"[^a-z0-9_-]", "-", pathlib.Path(args.out).stem.lower())[:64]
    print(export(session, args.out, race_id))


if __name__ == "__main__":
    sys.exit(main())
