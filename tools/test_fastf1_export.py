"""Tests of tools/fastf1_export.py on DataFrames shaped like FastF1's (no network, no FastF1).

The written file is checked by the hub's own validator: `replay-hub import FILE --cache dir:..`
reads, validates and encodes every frame. REPLAY_HUB_BIN names the binary (scripts/test sets it).
"""

import os
import pathlib
import struct
import subprocess
import sys
import types
import zlib

import msgpack
import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import fastf1_export  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
RADIUS_M = 300.0
LAP_S = 40.0
START_S = 3600.0  # session time of lights out


def read_race(path):
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == b"F1REPLAY"
    version, meta_len = struct.unpack(">HI", data[8:14])
    assert version == 1
    marker, count, crc = struct.unpack(">8sII", data[-16:])
    assert marker == b"F1RPLEND" and zlib.crc32(data[:-16]) == crc
    meta = msgpack.unpackb(data[14:14 + meta_len])
    frames = msgpack.unpackb(data[14 + meta_len:-16])
    assert len(frames) == meta[4] == count
    return meta, frames


def td(seconds):
    return pd.to_timedelta(seconds, unit="s")


def fake_session():
    """Three cars on a 300 m circle, two laps: car 1 wins, car 44 pits at the end of lap 1,
    car 16 retires on lap 2; a safety car in lap 2."""
    drivers = [("1", "VER", "Red Bull Racing", "3671C6", 1.0), ("44", "HAM", "Mercedes", "27F4D2", 0.97),
               ("16", "LEC", "Ferrari", "E8002D", 0.95)]
    pos_data, car_data, lap_rows = {}, {}, []
    circumference = 2 * np.pi * RADIUS_M
    for k, (num, code, team, colour, pace) in enumerate(drivers):
        lap_time = LAP_S / pace
        retire_at = START_S + lap_time * 1.5 if code == "LEC" else None
        t = np.arange(START_S - 20.0, START_S + 2 * lap_time + 30.0, 0.27)
        progress = np.clip(t - START_S, 0, None) / lap_time * circumference - 8.0 * (k + 1)
        if retire_at:
            progress = np.where(t > retire_at, progress[np.searchsorted(t, retire_at)], progress)
        angle = progress / RADIUS_M
        pos = pd.DataFrame({
            "Date": pd.Timestamp("2024-09-01T13:00:00") + td(t),
            "Status": "OnTrack",
            "X": RADIUS_M * 10 * np.cos(angle) + 5000,  # 1/10 m with an arbitrary origin
            "Y": RADIUS_M * 10 * np.sin(angle) - 2000,
            "Z": 100.0,
            "Source": "pos",
            "Time": td(t - t[0]),
            "SessionTime": td(t),
        })
        if code == "VER":
            pos.loc[5:7, ["X", "Y", "Z"]] = 0.0  # the feed's (0, 0, 0) glitches
        pos_data[num] = pos
        speed = np.where((t >= START_S) & ((retire_at is None) | (t < (retire_at or 0))), circumference / lap_time * 3.6, 0.0)
        car_data[num] = pd.DataFrame({
            "Date": pos["Date"], "RPM": 11000.0, "Speed": speed, "nGear": np.where(speed > 0, 7, 0),
            "Throttle": np.where(speed > 0, 99.0, 0.0), "Brake": speed == 0, "DRS": np.where(speed > 0, 12, 0),
            "Source": "car", "Time": pos["Time"], "SessionTime": pos["SessionTime"],
        })
        laps_done = 1 if retire_at else 2
        for lap in range(1, laps_done + 1):
            start = START_S + (lap - 1) * lap_time
            lap_rows.append({
                "Time": td(start + lap_time), "Driver": code, "DriverNumber": num,
                "LapTime": td(lap_time), "LapNumber": float(lap), "Stint": 1.0 if lap == 1 else 2.0,
                "PitOutTime": td(start + 3.0) if (code == "HAM" and lap == 2) else pd.NaT,
                "PitInTime": td(start + lap_time - 3.0) if (code == "HAM" and lap == 1) else pd.NaT,
                "Sector1Time": td(lap_time / 3), "Sector2Time": td(lap_time / 3), "Sector3Time": td(lap_time / 3),
                "Compound": "MEDIUM" if lap == 1 else "HARD", "TyreLife": float(lap), "FreshTyre": True,
                "Team": team, "LapStartTime": td(start),
                "LapStartDate": pd.Timestamp("2024-09-01T13:00:00") + td(start),
                "TrackStatus": "1", "Position": float(k + 1), "Deleted": False,
            })
    results = pd.DataFrame({
        "DriverNumber": [d[0] for d in drivers], "BroadcastName": [d[1] for d in drivers],
        "Abbreviation": [d[1] for d in drivers], "TeamName": [d[2] for d in drivers],
        "TeamColor": [d[3] for d in drivers], "Position": [1.0, 2.0, 3.0], "GridPosition": [1.0, 2.0, 3.0],
        "Status": ["Finished", "Finished", "Retired"],
    })
    track_status = pd.DataFrame({
        "Time": td([START_S + 55.0, START_S + 70.0]), "Status": ["4", "1"], "Message": ["SCDeployed", "AllClear"],
    })
    messages = pd.DataFrame({
        "Time": [pd.Timestamp("2024-09-01T14:00:55")], "Category": ["SafetyCar"], "Message": ["SAFETY CAR DEPLOYED"],
        "Status": ["DEPLOYED"], "Flag": [None], "Scope": ["Track"], "Sector": [np.nan], "RacingNumber": [None], "Lap": [2],
    })
    weather = pd.DataFrame({
        "Time": td([START_S, START_S + 60]), "AirTemp": [27.0, 27.1], "Humidity": [50.0, 51.0],
        "Pressure": [1010.0, 1010.0], "Rainfall": [False, False], "TrackTemp": [40.0, 40.5],
        "WindDirection": [100, 110], "WindSpeed": [1.0, 1.2],
    })
    return types.SimpleNamespace(
        laps=pd.DataFrame(lap_rows), results=results, pos_data=pos_data, car_data=car_data,
        track_status=track_status, race_control_messages=messages, weather_data=weather,
        event={"EventName": "Italian Grand Prix", "Country": "Italy"}, name="Race",
    )


def hub_binary():
    path = os.environ.get("REPLAY_HUB_BIN", str(ROOT / "target" / "debug" / "replay-hub"))
    if not os.path.exists(path):
        pytest.fail(f"build the hub first (cargo build): {path} is missing")
    return path


def test_export_writes_a_race_the_hub_validates(tmp_path):
    out = tmp_path / "monza-test.race"
    summary = fastf1_export.export(fake_session(), out, "monza-test")
    assert "3 cars" in summary and "1 race-control messages" in summary

    check = subprocess.run([hub_binary(), "import", str(out), "--cache", f"dir:{tmp_path / 'cache'}"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert 'imported race "monza-test"' in check.stdout

    meta, frames = read_race(out)
    assert meta[0] == "monza-test" and meta[1] == "Italian Grand Prix Race"
    assert meta[2] == 2 and meta[3] == 25
    assert [d[0] for d in meta[7]] == ["VER", "HAM", "LEC"]
    assert meta[7][0][3] == [0x36, 0x71, 0xC6]
    length = meta[6][0]
    assert abs(length - 2 * np.pi * RADIUS_M) / (2 * np.pi * RADIUS_M) < 0.02
    statuses = [s[0] for s in meta[8]]
    assert statuses == ["green", "safety_car", "green"]
    assert meta[8][0][1] == 0.0 and meta[8][-1][2] == pytest.approx(frames[-1][0])

    centre = np.column_stack([meta[6][1], meta[6][2]])
    seen_pit = seen_retired = seen_finished = False
    for t, lap, cars in frames:
        assert sorted(c[8] for c in cars) == [1, 2, 3]
        for c in cars:
            # Metres on the outline (the source's origin kept, divided by 10).
            assert np.min(np.hypot(centre[:, 0] - c[0], centre[:, 1] - c[1])) < 5.0
            assert 0 <= c[3] <= 8 and c[6] in (0, 8, 12) and 0.0 <= c[11] < 1.0
        seen_pit |= cars[1][14] == 1
        seen_retired |= cars[2][14] == 2
        seen_finished |= cars[0][14] == 3
    assert seen_pit and seen_retired and seen_finished
    last = frames[-1][2]
    assert last[2][8] == 3 and last[2][2] == 0.0  # retired: last, stopped
    assert last[0][8] == 1 and last[0][12] == 0.0  # the winner leads with no gap
    assert frames[0][2][0][9] == 1  # MEDIUM on lap 1
    assert frames[-1][2][1][9] == 2  # HARD after the stop


def test_a_bad_race_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match="invalid race id"):
        fastf1_export.export(fake_session(), tmp_path / "x.race", "Not Valid")
    assert not (tmp_path / "x.race").exists()
