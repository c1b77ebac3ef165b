#!/usr/bin/env python3
"""Generates euroqci.toml: a EuroQCI-like trusted-node network across 13 EU member states.

National backbones follow real city-to-city corridors; each corridor's fibre length is the
great-circle distance times a routing factor of 1.25 (terrestrial fibre typically runs 1.2-1.5x
the straight line), split into hops of at most 80 km with a trusted node at each splice point
(EuroQCI national networks place trusted nodes every ~50-100 km). Cross-border links join border
cities. Two optical ground stations (Matera, IT; Calar Alto, ES) are fibre-connected to their
backbones and served by one trusted satellite in a 500 km sun-synchronous orbit whose ascending
node is near local midnight (night passes).

Deterministic: run `python3 gen_euroqci.py > euroqci.toml`. No randomness here; random fibre
cuts are drawn by the simulator from the scenario seed.
"""
import math

R = 6371.0
ROUTE = 1.25
MAX_HOP = 80.0

CITIES = {
    # France
    "paris": ("FR", 48.857, 2.352), "lille": ("FR", 50.629, 3.057), "lyon": ("FR", 45.764, 4.836),
    "marseille": ("FR", 43.296, 5.370), "bordeaux": ("FR", 44.838, -0.579), "toulouse": ("FR", 43.605, 1.444),
    "strasbourg": ("FR", 48.573, 7.752), "nice": ("FR", 43.710, 7.262), "nantes": ("FR", 47.218, -1.554),
    "perpignan": ("FR", 42.699, 2.895),
    # Germany
    "berlin": ("DE", 52.520, 13.405), "hamburg": ("DE", 53.551, 9.994), "hannover": ("DE", 52.375, 9.732),
    "cologne": ("DE", 50.938, 6.960), "frankfurt": ("DE", 50.110, 8.682), "munich": ("DE", 48.135, 11.582),
    "leipzig": ("DE", 51.340, 12.375), "stuttgart": ("DE", 48.776, 9.183), "karlsruhe": ("DE", 49.007, 8.404),
    "nuremberg": ("DE", 49.452, 11.077), "aachen": ("DE", 50.776, 6.084), "dresden": ("DE", 51.050, 13.737),
    "flensburg": ("DE", 54.794, 9.446),
    # Benelux
    "brussels": ("BE", 50.850, 4.352), "antwerp": ("BE", 51.219, 4.402), "liege": ("BE", 50.633, 5.567),
    "amsterdam": ("NL", 52.368, 4.904), "rotterdam": ("NL", 51.924, 4.478), "utrecht": ("NL", 52.091, 5.122),
    "eindhoven": ("NL", 51.441, 5.470), "groningen": ("NL", 53.219, 6.567),
    "luxembourg": ("LU", 49.611, 6.130),
    # Austria
    "vienna": ("AT", 48.208, 16.373), "linz": ("AT", 48.306, 14.286), "salzburg": ("AT", 47.809, 13.055),
    "graz": ("AT", 47.071, 15.439), "innsbruck": ("AT", 47.269, 11.404),
    # Italy
    "rome": ("IT", 41.903, 12.496), "milan": ("IT", 45.464, 9.190), "turin": ("IT", 45.070, 7.687),
    "bologna": ("IT", 44.494, 11.343), "florence": ("IT", 43.770, 11.256), "naples": ("IT", 40.852, 14.268),
    "bari": ("IT", 41.117, 16.872), "venice": ("IT", 45.441, 12.316), "bolzano": ("IT", 46.498, 11.354),
    "genoa": ("IT", 44.405, 8.946),
    # Spain
    "madrid": ("ES", 40.417, -3.704), "barcelona": ("ES", 41.385, 2.173), "zaragoza": ("ES", 41.649, -0.889),
    "valencia": ("ES", 39.470, -0.376), "seville": ("ES", 37.389, -5.984), "granada": ("ES", 37.177, -3.599),
    "almeria": ("ES", 36.834, -2.464), "badajoz": ("ES", 38.879, -6.970), "bilbao": ("ES", 43.263, -2.935),
    "girona": ("ES", 41.979, 2.821),
    # Portugal
    "lisbon": ("PT", 38.722, -9.139), "porto": ("PT", 41.158, -8.629), "coimbra": ("PT", 40.203, -8.410),
    "elvas": ("PT", 38.881, -7.163),
    # Poland
    "warsaw": ("PL", 52.230, 21.012), "poznan": ("PL", 52.406, 16.925), "wroclaw": ("PL", 51.108, 17.038),
    "krakow": ("PL", 50.065, 19.945), "lodz": ("PL", 51.759, 19.456), "szczecin": ("PL", 53.428, 14.553),
    "gdansk": ("PL", 54.352, 18.646),
    # Czechia
    "prague": ("CZ", 50.076, 14.438), "brno": ("CZ", 49.195, 16.607), "ostrava": ("CZ", 49.820, 18.262),
    "plzen": ("CZ", 49.738, 13.373),
    # Denmark
    "copenhagen": ("DK", 55.676, 12.568), "odense": ("DK", 55.404, 10.402), "aarhus": ("DK", 56.163, 10.204),
    "kolding": ("DK", 55.491, 9.472),
    # Slovenia
    "ljubljana": ("SI", 46.057, 14.506), "maribor": ("SI", 46.555, 15.647),
}

BACKBONES = [
    # FR
    ("paris", "lille"), ("paris", "strasbourg"), ("paris", "lyon"), ("lyon", "marseille"), ("marseille", "nice"),
    ("paris", "nantes"), ("nantes", "bordeaux"), ("bordeaux", "toulouse"), ("toulouse", "perpignan"),
    ("toulouse", "marseille"),
    # DE
    ("berlin", "hamburg"), ("hamburg", "hannover"), ("hannover", "cologne"), ("cologne", "frankfurt"),
    ("frankfurt", "karlsruhe"), ("karlsruhe", "stuttgart"), ("stuttgart", "munich"), ("munich", "nuremberg"),
    ("nuremberg", "leipzig"), ("leipzig", "berlin"), ("leipzig", "dresden"), ("cologne", "aachen"),
    ("hamburg", "flensburg"), ("hannover", "leipzig"), ("frankfurt", "nuremberg"),
    # Benelux
    ("brussels", "antwerp"), ("brussels", "liege"), ("amsterdam", "utrecht"), ("utrecht", "rotterdam"),
    ("utrecht", "eindhoven"), ("amsterdam", "groningen"),
    # AT
    ("vienna", "linz"), ("linz", "salzburg"), ("salzburg", "innsbruck"), ("vienna", "graz"),
    # IT
    ("milan", "turin"), ("milan", "bologna"), ("bologna", "florence"), ("florence", "rome"), ("rome", "naples"),
    ("naples", "bari"), ("milan", "venice"), ("venice", "bolzano"), ("milan", "genoa"), ("genoa", "turin"),
    ("bologna", "venice"),
    # ES
    ("madrid", "zaragoza"), ("zaragoza", "barcelona"), ("barcelona", "valencia"), ("madrid", "valencia"),
    ("madrid", "seville"), ("seville", "granada"), ("granada", "almeria"), ("madrid", "badajoz"),
    ("madrid", "bilbao"), ("barcelona", "girona"),
    # PT
    ("lisbon", "coimbra"), ("coimbra", "porto"), ("lisbon", "elvas"),
    # PL
    ("warsaw", "lodz"), ("lodz", "wroclaw"), ("wroclaw", "poznan"), ("poznan", "warsaw"), ("lodz", "krakow"),
    ("poznan", "szczecin"), ("warsaw", "gdansk"),
    # CZ
    ("prague", "brno"), ("brno", "ostrava"), ("prague", "plzen"),
    # DK
    ("copenhagen", "odense"), ("odense", "kolding"), ("kolding", "aarhus"),
    # SI
    ("ljubljana", "maribor"),
]

CROSS_BORDER = [
    ("lille", "brussels"), ("antwerp", "rotterdam"), ("liege", "aachen"), ("luxembourg", "liege"),
    ("luxembourg", "strasbourg"), ("strasbourg", "karlsruhe"), ("eindhoven", "cologne"), ("groningen", "hamburg"),
    ("munich", "salzburg"), ("innsbruck", "bolzano"), ("dresden", "prague"), ("plzen", "nuremberg"),
    ("brno", "vienna"), ("ostrava", "krakow"), ("berlin", "szczecin"), ("flensburg", "kolding"),
    ("graz", "maribor"), ("ljubljana", "venice"), ("nice", "genoa"), ("perpignan", "girona"),
    ("bilbao", "bordeaux"), ("badajoz", "elvas"), ("wroclaw", "dresden"),
]

# Protocol by hop length: CV-QKD on short metro hops, GHz one-decoy on medium ones, Lim
# three-intensity finite key on long ones.
def model(hop_km, key):
    if hop_km <= 25:
        return f'{{ kind = "cv-gg02", length_km = {hop_km:.1f} }}'
    if hop_km <= 55:
        return f'{{ kind = "one-decoy-bb84", length_km = {hop_km:.1f}, block_bits = 1e6 }}'
    return (f'{{ kind = "finite-key-bb84", length_km = {hop_km:.1f}, block_bits = 1e6, '
            f'hardware = {{ preset = "lim2014", extra_loss_db = 1.5 }} }}')


def gc(a, b):
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dl = math.radians(b[1] - a[1])
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * R * math.asin(min(1.0, math.sqrt(h)))


def main():
    out = []
    w = out.append
    w("# EuroQCI-like network: 13 EU member states, national trusted-node backbones, cross-border")
    w("# links, two optical ground stations and a trusted satellite. GENERATED by gen_euroqci.py;")
    w("# edit the generator, not this file.")
    w("")
    w("[scenario]")
    w('name = "euroqci"')
    w('description = "EuroQCI-like trusted-node network across 13 member states with a trusted satellite"')
    w('start_utc = "2026-06-21T12:00:00Z"')
    w("duration_s = 86400")
    w("step_s = 1")
    w("seed = 2026")
    w("")
    w("# Random fibre cuts on every fibre link: ~0.3 per year per 100 km (1-4 per 1000 km per year is")
    w("# the usual planning figure for terrestrial cable), 8 h mean repair.")
    w("[faults]")
    w("cuts_per_year_per_100km = 0.3")
    w("mean_repair_h = 8.0")
    w("")
    nodes = {}
    for name, (cc, lat, lon) in CITIES.items():
        nodes[name] = (cc, lat, lon)
    links = []
    def corridor(a, b):
        ca, cb = nodes[a], nodes[b]
        d = gc(ca[1:], cb[1:]) * ROUTE
        hops = max(1, math.ceil(d / MAX_HOP))
        chain = [a]
        for k in range(1, hops):
            f = k / hops
            name = f"{a}-{b}-{k}"
            nodes[name] = (ca[0] if f < 0.5 else cb[0], ca[1] + f * (cb[1] - ca[1]), ca[2] + f * (cb[2] - ca[2]))
            chain.append(name)
        chain.append(b)
        for x, y in zip(chain, chain[1:]):
            links.append((x, y, d / hops))
    for a, b in BACKBONES + CROSS_BORDER:
        corridor(a, b)
    # Ground stations with a short fibre tail to the backbone.
    nodes["gs-matera"] = ("IT", 40.649, 16.704)
    nodes["gs-calar-alto"] = ("ES", 37.224, -2.546)
    corridor("gs-matera", "bari")
    corridor("gs-calar-alto", "almeria")
    for name, (cc, lat, lon) in nodes.items():
        w("[[nodes]]")
        w(f'id = "{name}"')
        w(f'country = "{cc}"')
        w(f"lat = {lat:.4f}")
        w(f"lon = {lon:.4f}")
        if name.startswith("gs-"):
            w('kind = "ground-station"')
            w("min_elevation_deg = 15.0")
            w("clear_sky_prob = 0.7" if name == "gs-calar-alto" else "clear_sky_prob = 0.6")
        w("")
    w("[[nodes]]")
    w('id = "sat-1"')
    w('kind = "satellite"')
    w("# Sun-synchronous 500 km; ascending node near local midnight on 21 June (RA of the Sun ~90°).")
    w("orbit = { altitude_km = 500.0, inclination_deg = 97.4, raan_deg = 265.0, phase_deg = 0.0 }")
    w("")
    for a, b, d in links:
        w("[[links]]")
        w(f'a = "{a}"')
        w(f'b = "{b}"')
        w(f"model = {model(d, a + b)}")
        w("")
    for gs in ["gs-matera", "gs-calar-alto"]:
        w("[[links]]")
        w(f'a = "sat-1"')
        w(f'b = "{gs}"')
        w("")
    def first_hop(a, b):
        for x, y, _ in links:
            if x == a and (y == b or y == f"{a}-{b}-1"):
                return f"{x}-{y}"
        raise KeyError((a, b))

    w("# An intercept-resend attack on a cross-border hop (aborts), and planned maintenance.")
    w("[[events]]")
    w(f'link = "{first_hop("strasbourg", "karlsruhe")}"')
    w('kind = "intercept-resend"')
    w("at_s = 36000")
    w("duration_s = 1800")
    w("fraction = 0.7")
    w("")
    w("[[events]]")
    w(f'link = "{first_hop("frankfurt", "karlsruhe")}"')
    w('kind = "fibre-cut"')
    w("at_s = 28800")
    w("repair_s = 21600")
    w("")
    w("[[events]]")
    w(f'link = "{first_hop("paris", "lyon")}"')
    w('kind = "maintenance"')
    w("at_s = 50400")
    w("duration_s = 3600")
    w("")
    for a, b in [("paris", "berlin"), ("lisbon", "warsaw"), ("rome", "amsterdam"), ("madrid", "vienna"),
                 ("brussels", "prague"), ("copenhagen", "ljubljana"), ("gs-matera", "gs-calar-alto")]:
        w("[[pairs]]")
        w(f'a = "{a}"')
        w(f'b = "{b}"')
        w("")
    print("\n".join(out).rstrip() + "\n")


if __name__ == "__main__":
    main()
