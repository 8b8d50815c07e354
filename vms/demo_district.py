"""The demo's small district: two towns' boundary, thirty sites of several kinds, where cameras stand.

Plain data for ``vms demo`` (and the map tests): the towns are drawn roughly where 城厢镇 and 沙溪镇
of 太仓市 lie; the sites are made up. The demo's cameras are placed on the sites in turn (school
cameras of the education industry at schools first), a few metres apart, so that they cover them by
distance; the rest of the sites are the blind spots a new district starts with.
"""

from __future__ import annotations

from typing import Any

CHENGXIANG = [[121.060, 31.425], [121.095, 31.418], [121.140, 31.422], [121.158, 31.445], [121.150, 31.482],
              [121.118, 31.494], [121.078, 31.488], [121.058, 31.462], [121.060, 31.425]]
SHAXI = [[121.005, 31.512], [121.050, 31.500], [121.078, 31.492], [121.100, 31.515], [121.098, 31.560],
         [121.072, 31.598], [121.030, 31.603], [121.002, 31.575], [121.005, 31.512]]

BOUNDARY: dict[str, Any] = {"type": "FeatureCollection", "features": [
    {"type": "Feature", "properties": {"name": "城厢镇", "center": "chengxiang"},
     "geometry": {"type": "Polygon", "coordinates": [CHENGXIANG]}},
    {"type": "Feature", "properties": {"name": "沙溪镇", "center": "shaxi"},
     "geometry": {"type": "Polygon", "coordinates": [SHAXI]}},
]}


def _box(lon: float, lat: float, dlon: float, dlat: float) -> list[list[float]]:
    return [[lon, lat], [lon + dlon, lat], [lon + dlon, lat + dlat], [lon, lat + dlat], [lon, lat]]


def _site(sid: str, name: str, kind: str, center: str, where: tuple[float, float] | list[list[float]],
          **extra: Any) -> dict[str, Any]:
    shape: dict[str, Any] = {"lon": where[0], "lat": where[1]} if isinstance(where, tuple) else {"polygon": where}
    return {"id": sid, "name": name, "kind": kind, "center": center, **shape, **extra}


#: Per town, in the order the demo's cameras are placed on them (key sites first).
TOWN_SITES: dict[str, list[dict[str, Any]]] = {
    "01": [
        _site("cx-dongmen", "东门路口", "key_location", "chengxiang", (121.1180, 31.4560)),
        _site("cx-bus", "城厢汽车站", "crowded_place", "chengxiang", (121.0960, 31.4520)),
        _site("cx-middle", "城厢中学", "school", "education", _box(121.1040, 31.4620, 0.0030, 0.0022)),
        _site("cx-renmin", "人民路", "main_road", "chengxiang", _box(121.0850, 31.4470, 0.0300, 0.0009)),
        _site("cx-kinder", "城厢幼儿园", "kindergarten", "education", (121.1250, 31.4610)),
        _site("cx-hospital", "太仓市第一人民医院", "hospital", "chengxiang", (121.1080, 31.4410)),
        _site("cx-elderly", "城厢敬老院", "elderly_home", "chengxiang", (121.1340, 31.4480)),
        _site("cx-market", "南门商业街", "shop_street", "chengxiang", (121.1120, 31.4380)),
        _site("cx-shops-1", "东街商铺", "shop_street", "chengxiang", _box(121.1150, 31.4530, 0.0060, 0.0008)),
        _site("cx-shops-2", "新华路商铺", "shop_street", "chengxiang", _box(121.0920, 31.4600, 0.0050, 0.0008)),
        _site("cx-comm-1", "东林社区", "community", "chengxiang", _box(121.1280, 31.4650, 0.0080, 0.0060)),
        _site("cx-comm-2", "南园社区", "community", "chengxiang", _box(121.1000, 31.4300, 0.0080, 0.0060)),
        _site("cx-comm-3", "西郊村", "community", "chengxiang", _box(121.0700, 31.4650, 0.0100, 0.0080)),
        _site("cx-home-1", "东林新村住户", "household", "chengxiang", (121.1320, 31.4680)),
        _site("cx-home-2", "南园小区住户", "household", "chengxiang", (121.1040, 31.4330)),
    ],
    "02": [
        _site("sx-oldtown", "沙溪古镇 入口", "crowded_place", "shaxi", (121.0560, 31.5540)),
        _site("sx-clinic", "沙溪卫生院", "hospital", "shaxi", (121.0640, 31.5500)),
        _site("sx-primary", "沙溪小学", "school", "education", _box(121.0480, 31.5580, 0.0025, 0.0020)),
        _site("sx-kinder", "沙溪中心幼儿园", "kindergarten", "education", (121.0700, 31.5610)),
        _site("sx-road", "沙南路", "main_road", "shaxi", _box(121.0300, 31.5450, 0.0350, 0.0009)),
        _site("sx-welfare", "沙溪福利院", "welfare_home", "shaxi", (121.0780, 31.5420)),
        _site("sx-market", "沙溪菜市场商铺", "shop_street", "shaxi", (121.0600, 31.5470)),
        _site("sx-comm-4", "直塘村", "community", "shaxi", _box(121.0350, 31.5300, 0.0100, 0.0080)),
        _site("sx-shops-1", "白云路商铺", "shop_street", "shaxi", _box(121.0500, 31.5510, 0.0060, 0.0008)),
        _site("sx-shops-2", "利泰路商铺", "shop_street", "shaxi", _box(121.0680, 31.5530, 0.0050, 0.0008)),
        _site("sx-comm-1", "沙溪社区", "community", "shaxi", _box(121.0520, 31.5650, 0.0080, 0.0060)),
        _site("sx-comm-2", "岳王村", "community", "shaxi", _box(121.0250, 31.5800, 0.0100, 0.0080)),
        _site("sx-comm-3", "归庄村", "community", "shaxi", _box(121.0850, 31.5250, 0.0100, 0.0080)),
        _site("sx-home-1", "沙溪新村住户", "household", "shaxi", (121.0560, 31.5680)),
        _site("sx-home-2", "岳王住户", "household", "shaxi", (121.0300, 31.5840)),
    ],
}
SITES = [s for town in TOWN_SITES.values() for s in town]
SCHOOL_KINDS = ("school", "kindergarten")


def _anchor(site: dict[str, Any]) -> tuple[float, float]:
    if "lon" in site:
        return site["lon"], site["lat"]
    ring = site["polygon"][:-1]
    return sum(p[0] for p in ring) / len(ring), sum(p[1] for p in ring) / len(ring)


def positions(device_ids: list[str]) -> dict[str, tuple[float, float]]:
    """Where each demo camera stands: education cameras (industry 11) on the town's schools first,
    the others on its other sites in turn; a second camera on one site stands about 15 m away."""
    out: dict[str, tuple[float, float]] = {}
    used: dict[str, int] = {}
    for d in device_ids:
        sites = TOWN_SITES.get(d[6:8])
        if not sites:
            continue
        school = d[8:10] == "11"
        pool = [s for s in sites if (s["kind"] in SCHOOL_KINDS) == school] or sites
        key = f"{d[6:8]}:{school}"
        k = used.get(key, 0)
        used[key] = k + 1
        lon, lat = _anchor(pool[k % len(pool)])
        lap = k // len(pool)
        out[d] = (round(lon + 0.00015 * lap, 6), round(lat + 0.0001 * (k % 3), 6))
    return out


def place(hub_cfg: dict[str, Any]) -> None:
    """Add the district (boundary, sites) to a demo hub config and give its devices their positions."""
    hub_cfg["map"] = {"boundary": BOUNDARY}
    hub_cfg["sites"] = SITES
    where = positions([d["id"] for d in hub_cfg.get("devices", [])])
    for d in hub_cfg.get("devices", []):
        if d["id"] in where:
            d["lon"], d["lat"] = where[d["id"]]
