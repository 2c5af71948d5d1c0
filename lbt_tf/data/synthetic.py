"""Procedural synthetic street scenes in the Cityscapes 19-train-id label space (pure numpy).

Each scene is a perspective street: a road and sidewalks converging to a vanishing point, building
facades with windows (and low walls of a similar colour) or open terrain with tree lines, sky,
cars/trucks/buses and people at depths drawn per scene (so smaller near the horizon), poles with
traffic signs and lights, trees, global lighting, shadows and sensor noise. Road and sidewalk share
the same grey and differ only by texture (asphalt vs. perspective tiles) and position, so a model
needs context, not colour. `ignore` pixels: the ego-vehicle bonnet and "static" clutter.

A scene is a pure function of (seed, split, index, height, width): the generator is seeded with
those numbers, and geometry is in normalised image coordinates, so any size works. The world
model: camera height 1, ground point (X, Z) -> image (vx + X/Z, horizon + 1/Z) in normalised
coordinates; a point at height Y rises to horizon + (1 - Y)/Z.
"""
from __future__ import annotations

import functools

import numpy as np

from lbt_tf.data.labels import train_id_by_name
from lbt_tf.errors import DataError

SPLITS = ("train", "val", "test")
LABELED_SPLITS = ("train", "val")

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, \
    CAR, TRUCK, BUS = (train_id_by_name(n) for n in (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "car", "truck", "bus"))
IGNORE = 255  # relabelled to the configured ignore label by `synthetic_example`

_FACADE_COLORS = np.array([[0.62, 0.55, 0.46], [0.55, 0.50, 0.48], [0.70, 0.64, 0.55],
                           [0.48, 0.36, 0.30], [0.60, 0.60, 0.60], [0.72, 0.68, 0.60]], np.float32)
_VEHICLE_COLORS = np.array([[0.75, 0.1, 0.1], [0.1, 0.2, 0.6], [0.85, 0.85, 0.85], [0.1, 0.1, 0.1],
                            [0.5, 0.5, 0.55], [0.2, 0.45, 0.25], [0.8, 0.7, 0.2]], np.float32)


def _frac(values):
    """Fractional part (faster than np.mod for the non-negative coordinates used here)."""
    return values - np.floor(values)


@functools.lru_cache(maxsize=32)
def _interpolation_matrices(height, width, cells):
    """Linear interpolation from a (cells+2) x (cells*W/H+2) grid to H x W pixels."""
    def matrix(size, grid_cells):
        position = (np.arange(size, dtype=np.float32) + 0.5) / size * grid_cells
        lower = position.astype(np.int64)
        weights = np.zeros((size, grid_cells + 2), np.float32)
        weights[np.arange(size), lower] = 1.0 - (position - lower)
        weights[np.arange(size), lower + 1] = position - lower
        return weights
    return matrix(height, cells), matrix(width, int(cells * width / height))


def synthetic_image(seed: int, split: str, index: int, height: int, width: int) -> np.ndarray:
    """The uint8 [H, W, 3] image of one scene (every split, the unlabeled test split included)."""
    return _render(seed, split, index, height, width)[0]


def synthetic_example(seed: int, split: str, index: int, height: int, width: int,
                      ignore_label: int = 255):
    """(image uint8 [H,W,3], label uint8 [H,W] train ids) of a labeled split (train | val)."""
    if split not in LABELED_SPLITS:
        raise DataError(f"synthetic split {split!r} has no labels (labeled: {LABELED_SPLITS})")
    image, label = _render(seed, split, index, height, width)
    if ignore_label != IGNORE:
        label = np.where(label == IGNORE, ignore_label, label).astype(np.uint8)
    return image, label


def _render(seed, split, index, height, width):
    if split not in SPLITS:
        raise DataError(f"unknown synthetic split {split!r}; expected one of {SPLITS}")
    if height < 8 or width < 8:
        raise DataError(f"synthetic scenes need at least 8x8 pixels, got {height}x{width}")
    rng = np.random.default_rng([int(seed), SPLITS.index(split), int(index)])
    scene = _Scene(rng, height, width)
    scene.paint_background()
    scene.paint_objects()
    return scene.finish()


class _Scene:
    def __init__(self, rng, height, width):
        self.rng, self.h, self.w = rng, height, width
        self.y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
        self.x = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
        self.horizon = rng.uniform(0.36, 0.48)
        self.vx = rng.uniform(0.38, 0.62)
        self.road = (-rng.uniform(0.35, 0.7), rng.uniform(0.35, 0.7))
        self.walk_width = (rng.uniform(0.2, 0.45), rng.uniform(0.2, 0.45))
        # Lateral position of the facade / tree-line plane on each side.
        self.side_x = (self.road[0] - self.walk_width[0], self.road[1] + self.walk_width[1])
        self.open_side = [rng.random() < 0.25, rng.random() < 0.25]
        self.grey = rng.uniform(0.33, 0.5)
        self.image = np.zeros((height, width, 3), np.float32)
        self.label = np.full((height, width), SKY, np.uint8)
        self.pixel_noise = rng.random((height, width), dtype=np.float32) - 0.5
        self.noise_fields = {}

    # ---------------------------------------------------------------- background
    def paint_background(self):
        rng, y, x = self.rng, self.y, self.x
        # Sky: gradient, sometimes overcast, with soft clouds.
        top = np.array([0.35, 0.55, 0.85] if rng.random() < 0.85 else [0.6, 0.68, 0.8], np.float32)
        bottom = np.array([0.85, 0.88, 0.92], np.float32)
        t = np.clip(y / self.horizon, 0, 1)[..., None]
        clouds = self.smooth_noise(6)[..., None] * 0.25
        self.image[:] = top * (1 - t) + bottom * t + clouds

        # Ground below the horizon: lateral X and depth Z of every ground pixel.
        below = y > self.horizon + 1e-4
        dy = np.maximum(y - self.horizon, 1e-4)
        depth = 1.0 / dy
        lateral = (x - self.vx) / dy
        ground = below & np.ones_like(x, bool)
        on_road = ground & (lateral > self.road[0]) & (lateral < self.road[1])
        on_walk = ground & ~on_road & (lateral > self.side_x[0]) & (lateral < self.side_x[1])
        beyond = ground & ~on_road & ~on_walk
        # Asphalt: one grey, fine noise, dashed centre line and side lines.
        asphalt = self.grey + 0.06 * self.pixel_noise
        centre = 0.5 * (self.road[0] + self.road[1])
        dashes = (np.abs(lateral - centre) < 0.025) & (_frac(depth * 0.35) < 0.5)
        edge_lines = (np.abs(lateral - self.road[0] - 0.04) < 0.015) | \
                     (np.abs(lateral - self.road[1] + 0.04) < 0.015)
        asphalt = np.where(on_road & (dashes | edge_lines), 0.85, asphalt)
        # Sidewalk: the same grey, perspective tiles instead of noise.
        tiles = (_frac(depth * 1.2) < 0.12) | (_frac(lateral * 6.0) < 0.12)
        paving = self.grey + self.rng.uniform(-0.03, 0.05) - 0.08 * tiles
        curb = (np.abs(lateral - self.road[0]) < 0.03) | (np.abs(lateral - self.road[1]) < 0.03)
        paving = np.where(curb, self.grey + 0.15, paving)
        grey = np.where(on_road, asphalt, paving)
        self.put(on_road | on_walk, np.stack([grey] * 3, -1), None)
        self.label[on_road] = ROAD
        self.label[on_walk] = SIDEWALK
        terrain_color = np.array([0.45, 0.55, 0.25], np.float32)
        self.put(beyond, terrain_color * (0.85 + 0.4 * self.smooth_noise(4)[..., None]), TERRAIN)

        # A cast shadow across the street (label unchanged).
        if rng.random() < 0.5:
            slope, offset = rng.uniform(-1.5, 1.5), rng.uniform(0.2, 0.8)
            shadow = below & (x - offset > slope * (y - 1.0))
            self.image[shadow] *= rng.uniform(0.5, 0.75)

        for side in (0, 1):
            if self.open_side[side]:
                self.paint_tree_line(side)
            else:
                self.paint_facades(side)

    def facade_coords(self, side):
        """Columns on that side of the vanishing point, and depth Z / height Y of their pixels
        on the vertical plane X = side_x[side]."""
        split = int(np.clip(np.floor(self.vx * self.w), 0, self.w))
        cols = slice(0, split) if side == 0 else slice(split + 1, self.w)
        dx = self.x[:, cols] - self.vx
        valid = np.abs(dx) > 1e-3
        depth = np.where(valid, self.side_x[side] / np.where(valid, dx, 1.0), np.float32(1e9))
        depth = depth.astype(np.float32)
        height = (1.0 - (self.y - self.horizon) * depth).astype(np.float32)
        return cols, valid, depth, height

    def paint_facades(self, side):
        """Blocks along the street (building | low wall | fence | vegetation gap), vectorised:
        every facade pixel looks up its block by depth."""
        rng = self.rng
        cols, valid, depth, height = self.facade_coords(side)
        rows = slice(0, self.h)
        lengths = rng.uniform(1.0, 5.0, 24)
        starts = 0.5 + np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
        kinds = rng.choice(4, size=24, p=[0.62, 0.12, 0.14, 0.12])
        tops = np.select([kinds == 0, kinds == 1, kinds == 2],
                         [rng.uniform(1.8, 5.0, 24), rng.uniform(0.4, 0.8, 24),
                          rng.uniform(0.5, 0.9, 24)], rng.uniform(1.5, 3.5, 24)).astype(np.float32)
        starts, lengths = starts.astype(np.float32), lengths.astype(np.float32)
        colors = _FACADE_COLORS[rng.integers(len(_FACADE_COLORS), size=24)] * rng.uniform(
            0.85, 1.1, (24, 1)).astype(np.float32)
        floors = rng.uniform(2.0, 3.5, 24).astype(np.float32)
        block = np.clip(np.searchsorted(starts, np.where(valid, depth, 0.0)) - 1, 0, 23)
        mask = valid & (depth >= starts[0]) & (depth < starts[-1] + lengths[-1]) & \
            (height >= 0) & (height <= tops[block])
        if not mask.any():
            return
        kind = np.where(mask, kinds[block], -1)
        height = np.where(mask, height, np.float32(0))
        along = np.where(mask, depth - starts[block], np.float32(0))
        storey = _frac(height * floors[block])
        windows = (storey > 0.35) & (storey < 0.8) & (_frac(along * 1.3) > 0.3) & \
            (height > 0.4) & (height < tops[block] - 0.2)
        color = colors[block] + 0.05 * self.pixel_noise[rows, cols][..., None]
        glass = np.float32([0.15, 0.2, 0.28]) + 0.1 * self.smooth_noise(8)[rows, cols][..., None]
        self.put_local(rows, cols, kind == 0, np.where(windows[..., None], glass, color), BUILDING)
        # Low wall of a facade colour: told from a building by its height and block courses.
        courses = (_frac(height * 10.0) < 0.2) | (_frac(along * 2.0 + 0.5 * _frac(height * 5.0))
                                                  < 0.06)
        self.put_local(rows, cols, kind == 1, color * (1.0 - 0.3 * courses[..., None]), WALL)
        if (kind == 2).any():  # fence in front of a hedge
            bars = (_frac(along * 4.0) < 0.25) | (_frac(height * 6.0) < 0.2)
            green = np.float32([0.25, 0.4, 0.15]) * (
                0.8 + self.smooth_noise(4)[rows, cols][..., None])
            self.put_local(rows, cols, (kind == 2) & ~bars, green, VEGETATION)
            self.put_local(rows, cols, (kind == 2) & bars, np.full(3, 0.55, np.float32), FENCE)
        if (kind == 3).any():
            full = np.zeros((self.h, self.w), bool)
            full[rows, cols] = kind == 3
            self.paint_foliage(full)

    def paint_tree_line(self, side):
        cols, valid, depth, height = self.facade_coords(side)
        top = 1.5 + 1.2 * self.smooth_noise(3)[:, cols]  # ragged crown line
        full = np.zeros((self.h, self.w), bool)
        full[:, cols] = valid & (height >= 0) & (height <= top) & (depth < 80)
        self.paint_foliage(full)

    def paint_foliage(self, mask):
        green = np.array([0.2, 0.38, 0.12], np.float32)
        texture = 0.6 + 0.9 * self.smooth_noise(3)[..., None] + 0.15 * self.pixel_noise[..., None]
        self.put(mask, green * texture, VEGETATION)

    # ---------------------------------------------------------------- objects
    def paint_objects(self):
        rng, things = self.rng, []
        for _ in range(rng.integers(1, 6)):  # vehicles on the road
            kind = rng.choice(3, p=[0.6, 0.2, 0.2])
            lane = rng.uniform(self.road[0] + 0.25, self.road[1] - 0.25)
            things.append((rng.uniform(1.2, 14.0), "vehicle", lane, int(kind)))
        for _ in range(rng.integers(0, 6)):  # people on the sidewalks
            side = rng.integers(2)
            lo, hi = sorted((self.road[side], self.side_x[side]))
            things.append((rng.uniform(1.0, 12.0), "person", rng.uniform(lo + 0.03, hi - 0.03), 0))
        for side in (0, 1):  # poles (with signs / lights) and trees along the curb
            curb_x = self.road[side] + (0.06 if side == 0 else -0.06) * -1
            z = rng.uniform(1.5, 5.0)
            while z < 20:
                things.append((z, "pole" if rng.random() < 0.6 else "tree", curb_x, 0))
                z += rng.uniform(3.0, 9.0)
        for _ in range(rng.integers(0, 3)):  # unlabeled street clutter
            side = rng.integers(2)
            lo, hi = sorted((self.road[side], self.side_x[side]))
            things.append((rng.uniform(1.5, 20.0), "clutter", rng.uniform(lo, hi), 0))
        for depth, kind, lateral, variant in sorted(things, key=lambda t: -t[0]):
            getattr(self, "paint_" + kind)(depth, lateral, variant)
        if rng.random() < 0.4:  # ego-vehicle bonnet: void, as in Cityscapes
            bulge = rng.uniform(0.04, 0.09) - 0.05 * (2 * self.x - 1) ** 2
            hood = self.y > 1.0 - bulge
            self.put(hood, np.array([0.08, 0.08, 0.1], np.float32) + 0.03 * self.pixel_noise[..., None],
                     IGNORE)

    def box(self, depth, lateral, half_width, bottom_height, top_height):
        """Pixel slices and local coords (u in [-1,1] across, v in [0,1] up) of a world box."""
        cx = self.vx + lateral / depth
        y_bottom = self.horizon + (1.0 - bottom_height) / depth
        y_top = self.horizon + (1.0 - top_height) / depth
        x0, x1 = cx - half_width / depth, cx + half_width / depth
        r0, r1 = int(np.floor(y_top * self.h)), int(np.ceil(y_bottom * self.h))
        c0, c1 = int(np.floor(x0 * self.w)), int(np.ceil(x1 * self.w))
        if c1 - c0 < 1 or r1 - r0 < 1:
            return None
        if c1 - c0 == 1 or (x1 - x0) * self.w < 1:  # keep thin things at least one pixel wide
            c1 = c0 + 1
        r0c, r1c, c0c, c1c = max(r0, 0), min(r1, self.h), max(c0, 0), min(c1, self.w)
        if r0c >= r1c or c0c >= c1c:
            return None
        v = (y_bottom - self.y[r0c:r1c]) / max(y_bottom - y_top, 1e-6)
        u = (self.x[:, c0c:c1c] - cx) / max(half_width / depth, 1e-6)
        if c1 - c0 == 1:
            u = np.zeros_like(u)
        return (slice(r0c, r1c), slice(c0c, c1c)), u, v

    def paint_vehicle(self, depth, lateral, kind):
        rng = self.rng
        half, tall, label = [(0.45, 0.75, CAR), (0.55, 1.7, TRUCK), (0.6, 1.9, BUS)][kind]
        found = self.box(depth, lateral, half * 1.15, -0.02, 0.05)
        if found:  # soft shadow under the vehicle, still road
            (rows, cols), u, v = found
            under = (u ** 2 < 1.0) & np.ones_like(v, bool)
            self.image[rows, cols][under] *= 0.55
        found = self.box(depth, lateral, half, 0.0, tall)
        if not found:
            return
        (rows, cols), u, v = found
        color = _VEHICLE_COLORS[rng.integers(len(_VEHICLE_COLORS))] * rng.uniform(0.8, 1.1)
        if kind == CAR - CAR:
            cabin = (v > 0.55) & (np.abs(u) < 1.0 - 0.6 * (v - 0.55))
            shape = (v <= 0.55) | cabin
            glass = cabin & (v < 0.92) & (np.abs(u) < 0.85 - 0.6 * (v - 0.55))
        elif kind == TRUCK - CAR:  # closed cargo box: two rear doors, no windows
            shape = np.ones_like(u * v, bool)
            glass = (np.abs(u) < 0.05) & (v > 0.2)
        else:  # bus: a band of windows
            shape = np.ones_like(u * v, bool)
            glass = (v > 0.55) & (v < 0.85) & (np.abs(u) < 0.9) & (_frac(u * 3) < 0.8)
        wheels = (v < 0.18) & (np.abs(np.abs(u) - 0.65) < 0.18)
        pixels = np.broadcast_to(color, shape.shape + (3,)).copy()
        pixels[glass] = (0.12, 0.14, 0.18)
        pixels[wheels & shape] = (0.05, 0.05, 0.05)
        lights = (v > 0.3) & (v < 0.42) & (np.abs(u) > 0.75)
        pixels[lights & shape] = (0.9, 0.15, 0.1)
        self.put_local(rows, cols, shape, pixels, label)

    def paint_person(self, depth, lateral, _):
        rng = self.rng
        found = self.box(depth, lateral, 0.17, 0.0, rng.uniform(1.2, 1.45))
        if not found:
            return
        (rows, cols), u, v = found
        head = (u ** 2 + ((v - 0.92) / 0.08) ** 2 * 0.35) < 0.35
        torso = (v > 0.45) & (v <= 0.85) & (np.abs(u) < 0.85)
        legs = (v <= 0.45) & (np.abs(np.abs(u) - 0.35) < 0.28)
        shape = head | torso | legs
        pixels = np.empty(shape.shape + (3,), np.float32)
        pixels[...] = rng.uniform(0.05, 0.4, 3)  # trousers
        pixels[torso] = rng.uniform(0.1, 0.9, 3)
        pixels[head] = (0.85, 0.65, 0.5) if rng.random() < 0.6 else (0.45, 0.3, 0.2)
        self.put_local(rows, cols, shape, pixels, PERSON)

    def paint_pole(self, depth, lateral, _):
        rng = self.rng
        top = rng.uniform(2.6, 3.6)
        found = self.box(depth, lateral, 0.07, 0.0, top)
        if found:
            (rows, cols), u, v = found
            self.put_local(rows, cols, np.ones_like(u * v, bool), np.full(3, 0.45, np.float32), POLE)
        attachment = rng.random()
        if attachment < 0.55:  # traffic sign: a coloured disc or plate on the pole
            found = self.box(depth, lateral, 0.4, top - 0.8, top - 0.05)
            if found:
                (rows, cols), u, v = found
                disc = u ** 2 + ((v - 0.5) * 2) ** 2 < 1.0 if rng.random() < 0.5 \
                    else np.ones_like(u * v, bool)
                color = [(0.8, 0.1, 0.1), (0.1, 0.3, 0.8), (0.9, 0.8, 0.1)][rng.integers(3)]
                pixels = np.broadcast_to(np.float32(color), disc.shape + (3,)).copy()
                pixels[(u ** 2 + ((v - 0.5) * 2) ** 2) < 0.35] = (0.9, 0.9, 0.9)
                self.put_local(rows, cols, disc, pixels, SIGN)
        elif attachment < 0.8:  # traffic light: dark housing with one lit lamp
            found = self.box(depth, lateral, 0.22, top - 1.2, top)
            if found:
                (rows, cols), u, v = found
                pixels = np.full((v.shape[0], u.shape[1], 3), 0.08, np.float32)
                lamp = rng.integers(3)
                lit = (np.abs(v - (0.2 + 0.3 * lamp)) < 0.1) & (np.abs(u) < 0.6)
                pixels[lit] = [(0.1, 0.9, 0.3), (0.95, 0.7, 0.1), (0.95, 0.1, 0.1)][lamp]
                self.put_local(rows, cols, np.ones(pixels.shape[:2], bool), pixels, LIGHT)

    def paint_tree(self, depth, lateral, _):
        rng = self.rng
        found = self.box(depth, lateral, 0.05, 0.0, 1.6)
        if found:  # the trunk is vegetation in Cityscapes
            (rows, cols), u, v = found
            self.put_local(rows, cols, np.ones_like(u * v, bool), np.float32((0.3, 0.22, 0.12)),
                           VEGETATION)
        radius = rng.uniform(0.5, 0.9)
        found = self.box(depth, lateral, radius, 1.3, 1.3 + 2 * radius)
        if found:
            (rows, cols), u, v = found
            crown = u ** 2 + ((v - 0.5) * 2) ** 2 < 1.0 - 0.3 * self.pixel_noise[rows, cols]
            green = np.float32((0.18, 0.35, 0.1)) * (
                0.7 + 0.8 * self.smooth_noise(3)[rows, cols][..., None])
            self.put_local(rows, cols, crown, green, VEGETATION)

    def paint_clutter(self, depth, lateral, _):
        found = self.box(depth, lateral, self.rng.uniform(0.1, 0.25), 0.0, self.rng.uniform(0.3, 0.8))
        if found:
            (rows, cols), u, v = found
            color = self.rng.uniform(0.1, 0.8, 3).astype(np.float32)
            self.put_local(rows, cols, np.ones_like(u * v, bool), color, IGNORE)

    # ---------------------------------------------------------------- helpers
    def put(self, mask, pixels, label):
        mask = np.broadcast_to(mask, (self.h, self.w))
        np.copyto(self.image, pixels, where=mask[..., None])
        if label is not None:
            np.copyto(self.label, np.uint8(label), where=mask)

    def put_local(self, rows, cols, mask, pixels, label):
        image, labels = self.image[rows, cols], self.label[rows, cols]  # views
        mask = np.broadcast_to(mask, labels.shape)
        np.copyto(image, pixels, where=mask[..., None])
        np.copyto(labels, np.uint8(label), where=mask)

    def smooth_noise(self, cells):
        """Low-frequency noise in [0, 1): a random `cells`-per-height grid, bilinear upsampled
        (two small matrix products). One field per cell size and scene."""
        if cells not in self.noise_fields:
            rows, cols = _interpolation_matrices(self.h, self.w, cells)
            grid = self.rng.random((rows.shape[1], cols.shape[1]), dtype=np.float32)
            self.noise_fields[cells] = rows @ grid @ cols.T
        return self.noise_fields[cells]

    def finish(self):
        rng = self.rng
        # Global lighting: exposure, colour cast, gamma; then sensor noise.
        image = self.image * rng.uniform(0.8, 1.15) * rng.uniform(0.93, 1.07, 3).astype(np.float32)
        image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.9, 1.1)
        image = image + rng.uniform(0.01, 0.04) * (rng.random(image.shape, dtype=np.float32) - 0.5)
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), self.label
