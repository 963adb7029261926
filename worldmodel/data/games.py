"""Small procedural games with ground-truth actions, rendered at any square size.

Each game simulates its state on a resolution-free board (coordinates in [0, 1])
and rasterises axis-aligned boxes with exact pixel coverage, so a 16x16 and a
64x64 rendering show the same game. The player is a sticky-random policy.

Randomness: episode k of a run draws from its own generator seeded by
(seed, k), so it is the same however many episodes are generated. Inside an
episode the world (layout, distractor, ball) and the policy use separate
streams, so changing `repeat_prob` does not change the level layout.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np

from worldmodel.data.video import VideoData
from worldmodel.errors import WorldbenchError

MIN_FRAME_SIZE = 8

# -----------------------------------------------------------------------------
# rasterisation: boxes in [0, 1] board coordinates -> pixels


def _coverage(lo: np.ndarray, hi: np.ndarray, size: int) -> np.ndarray:
    """Fraction of each pixel row/column covered by the interval [lo, hi).

    lo, hi: [T] in board units. Returns [T, size] in [0, 1].
    """
    edges = np.arange(size + 1, dtype=np.float64) / size  # [size + 1]
    overlap = np.minimum(hi[:, None], edges[None, 1:]) - np.maximum(lo[:, None], edges[None, :-1])
    return np.clip(overlap * size, 0.0, 1.0)


def _paint(canvas: np.ndarray, boxes: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Alpha-blend one box per frame onto the canvas, in place.

    canvas: float32 [T, S, S, 3]; boxes: [T, 4] as (top, left, bottom, right).
    Partially covered pixels get a blend, so sub-pixel motion stays visible.
    """
    size = canvas.shape[1]
    rows = _coverage(boxes[:, 0], boxes[:, 2], size)  # [T, S]
    cols = _coverage(boxes[:, 1], boxes[:, 3], size)  # [T, S]
    alpha = (rows[:, :, None] * cols[:, None, :])[..., None].astype(np.float32)  # [T, S, S, 1]
    blend = np.asarray(colour, dtype=np.float32) - canvas  # [T, S, S, 3]
    blend *= alpha  # in place: this runs on every frame, keep temporaries few
    canvas += blend


def _paint_cells(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Paint every True cell of a [G, G] grid mask onto a canvas [T, S, S, 3] (same on all frames)."""
    grid, size = mask.shape[0], canvas.shape[1]
    cell_edges = np.arange(grid + 1, dtype=np.float64) / grid  # [G + 1]
    cover = _coverage(cell_edges[:-1], cell_edges[1:], size)  # [G, S]: cell i's share of pixel p
    alpha = (cover.T @ mask.astype(np.float64) @ cover)[None, :, :, None].astype(np.float32)  # [1, S, S, 1]
    canvas += alpha * (np.asarray(colour, dtype=np.float32) - canvas)


def _blank(n_frames: int, size: int, colour: tuple[int, int, int]) -> np.ndarray:
    canvas = np.empty((n_frames, size, size, 3), dtype=np.float32)  # [T, S, S, 3]
    canvas[:] = np.asarray(colour, dtype=np.float32)
    return canvas


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


# -----------------------------------------------------------------------------
# policy


def sticky_random_actions(
    rng: np.random.Generator, n_steps: int, n_actions: int, repeat_prob: float
) -> np.ndarray:
    """Sticky-random actions: repeat the previous one with prob repeat_prob, else draw uniformly.

    Returns int64 [n_steps].
    """
    fresh = rng.integers(0, n_actions, size=n_steps)  # [n_steps] uniform candidates
    repeat = rng.random(n_steps) < repeat_prob  # [n_steps]
    actions = np.empty(n_steps, dtype=np.int64)
    for t in range(n_steps):
        actions[t] = actions[t - 1] if (t > 0 and repeat[t]) else fresh[t]
    return actions


# -----------------------------------------------------------------------------
# sprite_world: an agent on a walled grid plus a distractor that moves on its own
#
# Defaults are the controllable design (docs/controllability.md): at 16x16 with 4x4 patches a cell is
# one patch, the agent turns to face the way it was told to go (the half of its cell on that side lights
# up, nothing after a noop), so even a move into a wall shows its action, and the distractor is a
# spinner that circles inside its own cell, so it moves on every step but never competes with the
# agent for the latent actions.
# grid=8, border=True, walls=3, distractor="bouncer", facing=False, wrap=False gives the original room.

SPRITE_BACKGROUND = (24, 28, 48)
WALL_COLOUR = (128, 128, 140)
AGENT_COLOUR = (240, 80, 60)
FACING_COLOUR = (250, 230, 90)
DISTRACTOR_COLOUR = (70, 200, 110)
DISTRACTORS = ("spinner", "bouncer", "none")

# action -> (d_row, d_col) in cells; rows grow downwards like image rows
SPRITE_MOVES = np.array([(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)], dtype=np.int64)
# spinner: the quadrant of its cell the spinner's half-cell box is in, clockwise from the top left
SPINNER_QUADRANTS = np.array([(0, 0), (0, 1), (1, 1), (1, 0)], dtype=np.int64)


def _cell_boxes(cells: np.ndarray, grid: int) -> np.ndarray:
    """Integer (row, col) cells [K, 2] -> boxes [K, 4] in board units."""
    cells = cells.astype(np.float64)
    return np.concatenate([cells, cells + 1.0], axis=1) / grid


def _facing_boxes(cells: np.ndarray, facing: np.ndarray, grid: int) -> np.ndarray:
    """The half of each cell on the side that `facing` (an action) points to: the agent's front.

    Half a cell, not a thin bar: at 16x16 a thin bar is 2 pixels, too little of the loss for the LAM
    to learn the direction from (NMI 0.19-0.22 with a quarter-cell bar, 0.27-0.30 with a half cell,
    LAM alone, 1,000 steps). cells [T, 2], facing [T] actions -> boxes [T, 4]; noop gets an empty box.
    """
    top, left = cells[:, 0] / grid, cells[:, 1] / grid  # [T]
    cell, half = 1.0 / grid, 0.5 / grid
    boxes = np.stack([top, left, top, left], axis=1)  # [T, 4] empty
    sides = {  # action -> (top, left, bottom, right) offsets within the cell
        1: (0, 0, half, cell), 2: (half, 0, cell, cell), 3: (0, 0, cell, half), 4: (0, half, cell, cell),
    }
    for action, (t, l, b, r) in sides.items():
        on = facing == action
        boxes[on] = np.stack([top[on] + t, left[on] + l, top[on] + b, left[on] + r], axis=1)
    return boxes


def _walk(actions: np.ndarray, agent: np.ndarray, blocked: np.ndarray, wrap: bool, bouncer: np.ndarray,
          velocity: np.ndarray, bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The agent's and the bouncer's cells per frame, each [T, 2]; frame t+1 results from actions[t]."""
    grid = blocked.shape[0]
    lo, hi = bounds
    agent_cells = np.empty((len(actions), 2), dtype=np.int64)  # [T, 2]
    bouncer_cells = np.empty((len(actions), 2), dtype=np.int64)  # [T, 2]
    for t, action in enumerate(actions):
        agent_cells[t] = agent
        bouncer_cells[t] = bouncer
        target = agent + SPRITE_MOVES[action]
        if wrap:
            target %= grid
        if (0 <= target).all() and (target < grid).all() and not blocked[target[0], target[1]]:
            agent = target
        for axis in range(2):
            if not lo <= bouncer[axis] + velocity[axis] <= hi:
                velocity[axis] = -velocity[axis]
        bouncer = bouncer + velocity
    return agent_cells, bouncer_cells


def _play_sprite_world(world_rng: np.random.Generator, actions: np.ndarray, frame_size: int, grid: int = 4,
                       border: bool = False, walls: int = 1, distractor: str = "spinner",
                       facing: bool = True, wrap: bool = True, spinner_blocks: bool = True) -> np.ndarray:
    """Simulate one episode; frame t+1 results from actions[t]. Returns uint8 [T, S, S, 3].

    wrap: leaving the board re-enters on the opposite side (a torus, like Pac-Man's tunnels), so only
    walls block a move; otherwise the board's edge blocks too. spinner_blocks: the spinner's cell is
    an obstacle; otherwise the agent walks over it.
    """
    n_frames = len(actions)

    # layout: optional border walls, a few interior blocks, the spinner's cell and the agent's start
    wall_cells = np.zeros((grid, grid), dtype=bool)  # [grid, grid]
    if border:
        wall_cells[0, :] = wall_cells[-1, :] = wall_cells[:, 0] = wall_cells[:, -1] = True
    free = [(r, c) for r in range(grid) for c in range(grid) if not wall_cells[r, c]]
    n_picks = walls + (distractor == "spinner") + 1
    picks = [free[p] for p in world_rng.choice(len(free), size=n_picks, replace=False)]
    for cell in picks[:walls]:
        wall_cells[cell] = True
    blocked = wall_cells.copy()  # [grid, grid]: cells the agent cannot enter
    if distractor == "spinner":
        spinner_cell = np.array(picks[walls], dtype=np.int64)
        blocked[tuple(spinner_cell)] = spinner_blocks  # a machine the agent walks around, or over when off
    agent = np.array(picks[-1], dtype=np.int64)  # (row, col), never on a wall

    # bouncer: moves diagonally, bouncing off the board's edge (inside the border), ignoring walls
    lo, hi = (1, grid - 2) if border else (0, grid - 1)
    bouncer = world_rng.integers(lo, hi + 1, size=2)  # (row, col)
    velocity = world_rng.choice(np.array([-1, 1]), size=2)  # (d_row, d_col)
    spinner_phase = world_rng.integers(len(SPINNER_QUADRANTS))

    agent_cells, bouncer_cells = _walk(actions, agent, blocked, wrap, bouncer, velocity, (lo, hi))  # [T, 2] each

    # static layer once per episode, then the distractor, the agent on top, its lit front half
    background = _blank(1, frame_size, SPRITE_BACKGROUND)  # [1, S, S, 3]
    _paint_cells(background, wall_cells, WALL_COLOUR)
    canvas = np.repeat(background, n_frames, axis=0)  # [T, S, S, 3]
    if distractor == "bouncer":
        _paint(canvas, _cell_boxes(bouncer_cells, grid), DISTRACTOR_COLOUR)
    elif distractor == "spinner":
        quadrant = SPINNER_QUADRANTS[(spinner_phase + np.arange(n_frames)) % len(SPINNER_QUADRANTS)]  # [T, 2]
        top_left = (2 * spinner_cell[None] + quadrant) / (2 * grid)  # [T, 2] board units
        _paint(canvas, np.concatenate([top_left, top_left + 0.5 / grid], axis=1), DISTRACTOR_COLOUR)
    _paint(canvas, _cell_boxes(agent_cells, grid), AGENT_COLOUR)
    if facing:
        # frame t faces the way action t-1 pointed; frame 0 has no previous action
        last_action = np.concatenate([[0], actions[:-1]])  # [T]
        _paint(canvas, _facing_boxes(agent_cells, last_action, grid), FACING_COLOUR)
    return _to_uint8(canvas)


def _check_sprite_options(grid: int, border: bool, walls: int, distractor: str, facing: bool, wrap: bool,
                          spinner_blocks: bool) -> None:
    inner = grid - 2 if border else grid
    if not isinstance(grid, int) or isinstance(grid, bool) or inner < 2:
        raise WorldbenchError(f"sprite_world option grid={grid!r} leaves no room; use grid >= 2 (>= 4 with border)")
    if distractor not in DISTRACTORS:
        raise WorldbenchError(f"sprite_world option distractor={distractor!r}; use one of: {', '.join(DISTRACTORS)}")
    if not isinstance(walls, int) or isinstance(walls, bool) or not 0 <= walls <= inner * inner - 3:
        raise WorldbenchError(f"sprite_world option walls={walls!r}; use 0..{inner * inner - 3} for this grid")
    for name, value in (("border", border), ("facing", facing), ("wrap", wrap), ("spinner_blocks", spinner_blocks)):
        if not isinstance(value, bool):
            raise WorldbenchError(f"sprite_world option {name}={value!r} must be true or false")


# -----------------------------------------------------------------------------
# pong: the player's paddle on the left, a ball with momentum, a tracking opponent
#
# Defaults are the controllable design (docs/controllability.md): at 16x16 with 4x4 patches the
# player's paddle is a patch wide and moves two pixels per action, and it wraps from one edge of the
# board to the other, so no push against a wall goes unseen. On the original one-pixel paddle that
# stopped at the walls the ci profile's LAM found nothing (NMI 0.02 at 16x16).
# paddle_width=1/16, paddle_step=1/16, wrap=False gives the original game.

PONG_BACKGROUND = (12, 12, 20)
PADDLE_COLOUR = (240, 220, 70)  # the player's (action-controlled) paddle, left
OPPONENT_COLOUR = (90, 170, 240)  # scripted paddle, right
BALL_COLOUR = (245, 245, 245)

PADDLE_HEIGHT = 0.25
OPPONENT_WIDTH = 1 / 16
PLAYER_X = 1 / 16  # left edge of the player's paddle
OPPONENT_X = 1 - 2 / 16  # left edge of the opponent's paddle
OPPONENT_SPEED = 0.035  # slower than the ball can move vertically, so it sometimes misses
BALL_SIZE = 1 / 16
BALL_MAX_VY = 0.05

# action -> direction of the paddle's move, in paddle steps (0 noop, 1 up, 2 down)
PONG_DIRECTIONS = np.array([0.0, -1.0, 1.0])


def _serve(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Ball at the centre with a random direction: (y, x, vy, vx)."""
    vx = rng.uniform(0.04, 0.055) * rng.choice([-1.0, 1.0])
    vy = rng.uniform(-0.03, 0.03)
    centre = 0.5 - BALL_SIZE / 2
    return centre, centre, vy, vx


def _play_pong(world_rng: np.random.Generator, actions: np.ndarray, frame_size: int, paddle_width: float = 0.25,
               paddle_step: float = 0.125, wrap: bool = True) -> np.ndarray:
    """Simulate one episode; frame t+1 results from actions[t]. Returns uint8 [T, S, S, 3].

    paddle_width, paddle_step: in board units. wrap: the player's paddle leaving the board re-enters at
    the other edge (drawn in two pieces while it crosses); otherwise the walls stop it.
    """
    n_frames = len(actions)
    top_limit = 1.0 - PADDLE_HEIGHT
    player_y = 6 / 16  # paddle top; multiples of the step keep it pixel-aligned
    opponent_y = 6 / 16
    ball_y, ball_x, vy, vx = _serve(world_rng)

    # per frame: player top, opponent top, ball top, ball left
    state = np.empty((n_frames, 4), dtype=np.float64)  # [T, 4]
    for t in range(n_frames):
        state[t] = (player_y, opponent_y, ball_y, ball_x)

        player_y = player_y + paddle_step * PONG_DIRECTIONS[actions[t]]
        player_y = player_y % 1.0 if wrap else min(max(player_y, 0.0), top_limit)
        chase = (ball_y + BALL_SIZE / 2) - (opponent_y + PADDLE_HEIGHT / 2)
        opponent_y = min(max(opponent_y + min(max(chase, -OPPONENT_SPEED), OPPONENT_SPEED), 0.0), top_limit)

        prev_x = ball_x
        ball_y, ball_x = ball_y + vy, ball_x + vx
        if ball_y < 0.0:  # top wall
            ball_y, vy = -ball_y, -vy
        elif ball_y > 1.0 - BALL_SIZE:  # bottom wall
            ball_y, vy = 2 * (1.0 - BALL_SIZE) - ball_y, -vy

        player_face = PLAYER_X + paddle_width
        # a wrapped paddle is two pieces: its top at player_y and, past the bottom edge, at player_y - 1
        tops = (player_y, player_y - 1.0) if wrap else (player_y,)
        hit_top = next((top for top in tops if top - BALL_SIZE < ball_y < top + PADDLE_HEIGHT), None)
        if vx < 0 and prev_x >= player_face > ball_x and hit_top is not None:
            ball_x, vx = 2 * player_face - ball_x, -vx
            # where it hits the paddle steers the ball, like the arcade game
            offset = (ball_y + BALL_SIZE / 2 - hit_top - PADDLE_HEIGHT / 2) / (PADDLE_HEIGHT / 2)
            vy = min(max(vy + 0.02 * offset, -BALL_MAX_VY), BALL_MAX_VY)

        opponent_face = OPPONENT_X - BALL_SIZE  # ball's left edge when touching the opponent
        hits_opponent = opponent_y - BALL_SIZE < ball_y < opponent_y + PADDLE_HEIGHT
        if vx > 0 and prev_x <= opponent_face < ball_x and hits_opponent:
            ball_x, vx = 2 * opponent_face - ball_x, -vx

        if ball_x + BALL_SIZE < 0.0 or ball_x > 1.0:  # missed: serve again
            ball_y, ball_x, vy, vx = _serve(world_rng)

    def boxes(top: np.ndarray, left: float | np.ndarray, height: float, width: float) -> np.ndarray:
        left = np.broadcast_to(left, top.shape)
        return np.stack([top, left, top + height, left + width], axis=1)  # [T, 4]

    canvas = _blank(n_frames, frame_size, PONG_BACKGROUND)  # [T, S, S, 3]
    _paint(canvas, boxes(state[:, 0], PLAYER_X, PADDLE_HEIGHT, paddle_width), PADDLE_COLOUR)
    if wrap:  # the piece past the bottom edge, drawn at the top (an empty box when there is none)
        _paint(canvas, boxes(state[:, 0] - 1.0, PLAYER_X, PADDLE_HEIGHT, paddle_width), PADDLE_COLOUR)
    _paint(canvas, boxes(state[:, 1], OPPONENT_X, PADDLE_HEIGHT, OPPONENT_WIDTH), OPPONENT_COLOUR)
    _paint(canvas, boxes(state[:, 2], state[:, 3], BALL_SIZE, BALL_SIZE), BALL_COLOUR)
    return _to_uint8(canvas)


def _check_pong_options(paddle_width: float, paddle_step: float, wrap: bool) -> None:
    for name, value, high in (("paddle_width", paddle_width, OPPONENT_X - PLAYER_X - BALL_SIZE),
                              ("paddle_step", paddle_step, 1.0 - PADDLE_HEIGHT)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
            raise WorldbenchError(f"pong option {name}={value!r}; use a number in (0, {high:g}] (board units)")
    if not isinstance(wrap, bool):
        raise WorldbenchError(f"pong option wrap={wrap!r} must be true or false")


# -----------------------------------------------------------------------------
# registry and the public entry point


@dataclass(frozen=True)
class GameSpec:
    name: str
    n_actions: int
    action_names: tuple[str, ...]
    description: str
    # (world_rng, actions [T], frame_size, **options) -> uint8 frames [T, S, S, 3]; the keyword
    # parameters with defaults are the game's options, and those defaults are the only ones
    play: Callable[..., np.ndarray]
    # (**every option) -> None, raising a one-line WorldbenchError for a value the game cannot use
    check_options: Callable[..., None] = lambda **options: None


GAMES: dict[str, GameSpec] = {
    "sprite_world": GameSpec(
        name="sprite_world",
        n_actions=5,
        action_names=("noop", "up", "down", "left", "right"),
        description=(
            "4x4-cell torus: a red agent moved one cell per action and facing that way, blocked by "
            "a grey wall and a green spinner that circles inside its own cell; options grid, border, walls, "
            "distractor (spinner|bouncer|none), facing, wrap, spinner_blocks"
        ),
        play=_play_sprite_world,
        check_options=_check_sprite_options,
    ),
    "pong": GameSpec(
        name="pong",
        n_actions=3,
        action_names=("noop", "up", "down"),
        description=(
            "yellow player paddle on the left moved two pixels (at 16x16) by the action and wrapping round "
            "the board, a white ball with momentum bouncing off walls and paddles, a blue opponent paddle "
            "tracking the ball; misses re-serve; options paddle_width, paddle_step, wrap"
        ),
        play=_play_pong,
        check_options=_check_pong_options,
    ),
}


def get_game(game: str) -> GameSpec:
    if game not in GAMES:
        raise WorldbenchError(f"unknown game {game!r}; known games: {', '.join(sorted(GAMES))}")
    return GAMES[game]


def check_game_options(game: str, options: dict) -> None:
    """One clear line for an option the game does not have or a value it cannot use."""
    spec = get_game(game)
    defaults = {name: parameter.default for name, parameter in inspect.signature(spec.play).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    for name in options:
        if name not in defaults:
            raise WorldbenchError(
                f"game {game!r} has no option {name!r}; its options: {', '.join(sorted(defaults)) or 'none'}")
    spec.check_options(**{**defaults, **options})


def check_generation(game: str, n_episodes: int, episode_len: int, frame_size: int, seed: int,
                     repeat_prob: float, options: dict | None = None, noop: bool = True) -> None:
    """One clear line for any argument `generate` cannot use (checked before generating anything)."""
    check_game_options(game, dict(options or {}))
    if not isinstance(noop, bool):
        raise WorldbenchError(f"game {game!r}: noop must be true or false, got {noop!r}")
    if n_episodes < 1 or episode_len < 1:
        raise WorldbenchError(
            f"game {game!r}: n_episodes and episode_len must be >= 1, got {n_episodes} and {episode_len}"
        )
    if frame_size < MIN_FRAME_SIZE:
        raise WorldbenchError(f"game {game!r}: frame_size must be >= {MIN_FRAME_SIZE}, got {frame_size}")
    if seed < 0:
        raise WorldbenchError(f"game {game!r}: seed must be a non-negative integer, got {seed}")
    if not 0.0 <= repeat_prob <= 1.0:
        raise WorldbenchError(f"game {game!r}: repeat_prob must be in [0, 1], got {repeat_prob}")


def generate(
    game: str,
    n_episodes: int,
    episode_len: int,
    frame_size: int,
    seed: int,
    repeat_prob: float = 0.75,
    options: dict | None = None,
    noop: bool = True,
) -> VideoData:
    """Play n_episodes episodes of episode_len frames each with the sticky-random policy.

    noop: whether the policy plays action 0 (noop); false: it moves on every step (actions 1..n-1).

    `options` are the game's own keyword options: the defaulted parameters of its play function
    (sprite_world: grid, border, walls, distractor, facing, wrap; pong: paddle_width, paddle_step, wrap).
    """
    spec = get_game(game)
    options = dict(options or {})
    check_generation(game, n_episodes, episode_len, frame_size, seed, repeat_prob, options, noop)
    first_action = 0 if noop else 1

    all_frames, all_actions = [], []
    for episode in range(n_episodes):
        world_seed, policy_seed = np.random.SeedSequence([seed, episode]).spawn(2)
        world_rng, policy_rng = np.random.default_rng(world_seed), np.random.default_rng(policy_seed)
        # the action at the last frame produces nothing, so it is recorded as 0
        actions = np.zeros(episode_len, dtype=np.int64)  # [T]
        actions[:-1] = first_action + sticky_random_actions(policy_rng, episode_len - 1,
                                                            spec.n_actions - first_action, repeat_prob)
        all_frames.append(spec.play(world_rng, actions, frame_size, **options))  # [T, S, S, 3]
        all_actions.append(actions)

    return VideoData(
        frames=np.concatenate(all_frames),  # [n_episodes * T, S, S, 3]
        actions=np.concatenate(all_actions),  # [n_episodes * T]
        episode_starts=np.arange(n_episodes, dtype=np.int64) * episode_len,
        n_actions=spec.n_actions,
    )
