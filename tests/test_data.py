"""Behaviour of the data module: procedural games, the HDF5 format, training windows, errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from worldmodel.data import GAMES, VideoData, VideoWindows, generate, load_hdf5, save_hdf5
from worldmodel.data import games
from worldmodel.errors import WorldbenchError

# -----------------------------------------------------------------------------
# helpers


def sprite_cell(frame: np.ndarray, colour: tuple[int, int, int], cell: int) -> tuple[int, int] | None:
    """(row, col) grid cell of the sprite drawn in `colour`, or None if it is hidden."""
    ys, xs = np.nonzero(np.all(frame == np.array(colour, np.uint8), axis=-1))
    if len(ys) == 0:
        return None
    return int(ys.min()) // cell, int(xs.min()) // cell


def assert_one_line_error(err: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(err.value)


def synthetic_video(lengths: list[int], with_actions: bool = True) -> VideoData:
    """Tiny video whose frame i stores i in pixel (0, 0, 0), so windows can be traced back."""
    n_frames = sum(lengths)
    frames = np.zeros((n_frames, 4, 4, 3), dtype=np.uint8)  # [N, 4, 4, 3]
    frames[:, 0, 0, 0] = np.arange(n_frames)
    actions = (np.arange(n_frames) % 3).astype(np.int64) if with_actions else None
    starts = np.cumsum([0] + lengths[:-1]).astype(np.int64)
    n_actions = 3 if with_actions else None
    return VideoData(frames=frames, actions=actions, episode_starts=starts, n_actions=n_actions)


def frame_ids(window_frames: torch.Tensor) -> np.ndarray:
    """Recover the global frame indices from windows of synthetic_video: [..., T, 3, H, W] -> [..., T]."""
    return np.rint((window_frames[..., 0, 0, 0].numpy() + 1.0) * 127.5).astype(np.int64)


# -----------------------------------------------------------------------------
# games


@pytest.mark.parametrize("game", sorted(GAMES))
def test_generate_is_deterministic_per_seed_and_episode(game: str) -> None:
    a = generate(game, n_episodes=5, episode_len=12, frame_size=16, seed=3)
    b = generate(game, n_episodes=5, episode_len=12, frame_size=16, seed=3)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.actions, b.actions)

    other = generate(game, n_episodes=5, episode_len=12, frame_size=16, seed=4)
    assert not np.array_equal(a.frames, other.frames)

    longer = generate(game, n_episodes=10, episode_len=12, frame_size=16, seed=3)
    np.testing.assert_array_equal(longer.frames[: len(a.frames)], a.frames)
    np.testing.assert_array_equal(longer.actions[: len(a.actions)], a.actions)


@pytest.mark.parametrize("game", sorted(GAMES))
@pytest.mark.parametrize("frame_size", [8, 20, 32])
def test_generate_shapes_and_layout(game: str, frame_size: int) -> None:
    data = generate(game, n_episodes=3, episode_len=7, frame_size=frame_size, seed=0)
    assert data.frames.shape == (21, frame_size, frame_size, 3) and data.frames.dtype == np.uint8
    assert data.actions.dtype == np.int64 and data.actions.shape == (21,)
    np.testing.assert_array_equal(data.episode_starts, [0, 7, 14])
    assert data.n_actions == GAMES[game].n_actions == len(GAMES[game].action_names)
    assert data.actions.min() >= 0 and data.actions.max() < data.n_actions
    assert np.all(data.actions[[6, 13, 20]] == 0)  # last frame of each episode holds 0


def test_sticky_policy_repeats_at_the_requested_rate() -> None:
    always = generate("pong", n_episodes=4, episode_len=10, frame_size=8, seed=0, repeat_prob=1.0)
    for start in always.episode_starts:
        assert len(set(always.actions[start : start + 9])) == 1
    sticky = generate("sprite_world", n_episodes=50, episode_len=21, frame_size=8, seed=0)
    acts = sticky.actions.reshape(50, 21)[:, :20]
    same = (acts[:, 1:] == acts[:, :-1]).mean()
    assert 0.7 < same < 0.88  # 0.75 + 0.25 / 5 = 0.8 expected


CLASSIC_ROOM = {"grid": 8, "border": True, "walls": 3, "distractor": "bouncer", "facing": False, "wrap": False}


def test_classic_room_actions_move_the_agent_and_not_the_distractor() -> None:
    size, cell = 32, 32 // 8
    data = generate("sprite_world", n_episodes=12, episode_len=24, frame_size=size, seed=1, options=CLASSIC_ROOM)
    moved = {a: 0 for a in range(5)}
    distractor_moves_on_noop = 0
    for start in data.episode_starts:
        # walls are static, but the distractor may fly over one: a wall shows in some frame
        centres = data.frames[start : start + 24, cell // 2 :: cell, cell // 2 :: cell]  # [T, 8, 8, 3]
        walls = np.any(np.all(centres == np.array(games.WALL_COLOUR, np.uint8), axis=-1), axis=0)  # [8, 8]
        for t in range(start, start + 23):
            before, after, action = data.frames[t], data.frames[t + 1], int(data.actions[t])
            agent = sprite_cell(before, games.AGENT_COLOUR, cell)
            agent_next = sprite_cell(after, games.AGENT_COLOUR, cell)
            d_row, d_col = games.SPRITE_MOVES[action]
            target = (agent[0] + d_row, agent[1] + d_col)
            blocked = walls[target]
            assert agent_next == (agent if blocked else target), (t, action)
            moved[action] += agent_next != agent

            # the distractor moves one diagonal cell every step, whatever the action
            dist = sprite_cell(before, games.DISTRACTOR_COLOUR, cell)
            dist_next = sprite_cell(after, games.DISTRACTOR_COLOUR, cell)
            if dist is not None and dist_next is not None:
                assert abs(dist_next[0] - dist[0]) == 1 and abs(dist_next[1] - dist[1]) == 1
                distractor_moves_on_noop += action == 0
    assert moved[0] == 0
    assert all(moved[a] > 0 for a in (1, 2, 3, 4))  # up/down/left/right each moved the agent somewhere
    assert distractor_moves_on_noop > 0


def test_default_sprite_world_shows_every_action_and_the_spinner_moves_on_its_own() -> None:
    """The controllable design: the agent wraps around the board, faces the way it was told, and the
    spinner circles inside its cell whatever the agent does."""
    size, grid = 16, 4
    cell = size // grid
    data = generate("sprite_world", n_episodes=10, episode_len=20, frame_size=size, seed=3)
    facing_colour = np.array(games.FACING_COLOUR, np.uint8)
    spinner_colour = np.array(games.DISTRACTOR_COLOUR, np.uint8)
    wrapped, spinner_moves_on_noop = 0, 0
    for start in data.episode_starts:
        for t in range(start, start + 19):
            before, after, action = data.frames[t], data.frames[t + 1], int(data.actions[t])
            agent, agent_next = sprite_cell(before, games.AGENT_COLOUR, cell), sprite_cell(after, games.AGENT_COLOUR, cell)
            d_row, d_col = games.SPRITE_MOVES[action]
            target = ((agent[0] + d_row) % grid, (agent[1] + d_col) % grid)
            assert agent_next in (agent, target), (t, action)  # moved as told, or blocked by a wall/spinner
            wrapped += agent_next == target and target != (agent[0] + d_row, agent[1] + d_col)
            # the agent's front half lights up on the side the action points to, and nothing after a noop
            front = np.argwhere(np.all(after == facing_colour, axis=-1))  # [K, 2] pixels
            if action == 0:
                assert len(front) == 0
            else:
                middle_row, middle_col = agent_next[0] * cell + cell // 2, agent_next[1] * cell + cell // 2
                side = {1: front[:, 0] < middle_row, 2: front[:, 0] >= middle_row,
                        3: front[:, 1] < middle_col, 4: front[:, 1] >= middle_col}[action]
                assert len(front) == cell * cell // 2 and side.all(), (t, action)
            spinner = np.argwhere(np.all(before == spinner_colour, axis=-1))
            spinner_next = np.argwhere(np.all(after == spinner_colour, axis=-1))
            assert len(spinner) and len(spinner_next) and not np.array_equal(spinner, spinner_next)
            spinner_moves_on_noop += action == 0
    assert wrapped > 0 and spinner_moves_on_noop > 0


@pytest.mark.parametrize("game, options, needle", [
    ("sprite_world", {"grid": 1}, "grid"), ("sprite_world", {"distractor": "ufo"}, "distractor"),
    ("sprite_world", {"walls": 99}, "walls"), ("sprite_world", {"facing": "yes"}, "facing"),
    ("sprite_world", {"colour": 3}, "no option 'colour'"),
    ("pong", {"paddle_width": 0.9}, r"paddle_width=0.9; use a number in \(0, 0.75\]"),
    ("pong", {"paddle_step": True}, "paddle_step=True"), ("pong", {"wrap": 1}, "wrap=1 must be true or false"),
])
def test_bad_game_options_get_one_line(game: str, options: dict, needle: str) -> None:
    with pytest.raises(WorldbenchError, match=needle) as err:
        generate(game, 2, 8, 16, seed=0, options=options)
    assert_one_line_error(err)


@pytest.mark.parametrize("options, step_px, wrap", [
    ({}, 4, True),  # the default design at 32x32: a step of 1/8 board, wrapping round
    ({"paddle_width": 1 / 16, "paddle_step": 1 / 16, "wrap": False}, 2, False),  # the original game
])
def test_pong_actions_move_the_player_paddle(options: dict, step_px: int, wrap: bool) -> None:
    size = 32
    data = generate("pong", n_episodes=6, episode_len=20, frame_size=size, seed=2, repeat_prob=0.0, options=options)
    height = round(games.PADDLE_HEIGHT * size)
    column = int(games.PLAYER_X * size)  # the paddle's leftmost pixel column

    def paddle_top(frame: np.ndarray) -> int | None:
        """The paddle's top row, or None while a ball that got past it is drawn over it."""
        is_paddle = np.all(frame[:, column] == np.array(games.PADDLE_COLOUR, np.uint8), axis=-1)  # [S]
        if is_paddle.sum() != height:  # whole, in one piece or two, unless the ball covers part of it
            return None
        # the row whose row above (round the board) is not paddle
        return int(np.nonzero(is_paddle & ~np.roll(is_paddle, 1))[0][0])

    seen, wrapped, checked = set(), False, 0
    for start in data.episode_starts:
        for t in range(start, start + 19):
            top, top_next = paddle_top(data.frames[t]), paddle_top(data.frames[t + 1])
            if top is None or top_next is None:
                continue
            checked += 1
            move = {0: 0, 1: -step_px, 2: step_px}[int(data.actions[t])]
            wanted = (top + move) % size if wrap else min(max(top + move, 0), size - height)
            assert top_next == wanted
            seen.add(int(data.actions[t]))
            wrapped |= top_next > size - height
    assert seen == {0, 1, 2} and checked >= 0.9 * 6 * 19
    assert wrapped == wrap  # the default paddle does cross the edge in these episodes


def test_unknown_game_lists_known_games() -> None:
    message = r"unknown game 'pacman'; known games: pong, sprite_world"
    with pytest.raises(WorldbenchError, match=message) as err:
        generate("pacman", n_episodes=1, episode_len=4, frame_size=16, seed=0)
    assert_one_line_error(err)


# -----------------------------------------------------------------------------
# windows


def every_window(windows: VideoWindows) -> tuple[torch.Tensor, torch.Tensor]:
    """All windows as one batch: frames [N_windows, T, 3, H, W], actions [N_windows, T-1]."""
    return windows.batch(np.arange(len(windows)))


def test_windows_stay_inside_episodes_and_splits_are_disjoint() -> None:
    lengths = [6, 7, 8, 5, 9]
    data = synthetic_video(lengths)
    episode_of = np.repeat(np.arange(len(lengths)), lengths)  # [N]
    window = 4

    seen_episodes = {}
    for split in ("train", "val"):
        windows = VideoWindows(data, window=window, split=split, val_fraction=0.4)
        frames, actions = every_window(windows)
        assert frames.shape == (len(windows), window, 3, 4, 4) and frames.dtype == torch.float32
        assert actions.shape == (len(windows), window - 1) and actions.dtype == torch.int64
        ids = frame_ids(frames)  # [N_windows, T]
        assert np.all(np.diff(ids, axis=1) == 1)  # consecutive frames
        assert np.all(episode_of[ids] == episode_of[ids[:, :1]])  # never crosses an episode boundary
        seen_episodes[split] = set(episode_of[ids[:, 0]].tolist())
        np.testing.assert_array_equal(actions.numpy(), data.actions[ids[:, :-1]])  # action t leads from frame t

    assert seen_episodes["train"] == {0, 1, 2} and seen_episodes["val"] == {3, 4}  # last 2 of 5 episodes
    assert len(VideoWindows(data, window=window, split="val", val_fraction=0.4)) == (5 - 3) + (9 - 3)


def test_windows_values_stride_and_unknown_actions() -> None:
    data = synthetic_video([20, 20], with_actions=False)
    windows = VideoWindows(data, window=5, split="train", stride=3)
    assert len(windows) == 6 and windows.window == 5 and windows.frame_size == 4 and windows.n_actions is None
    frames, actions = every_window(windows)
    assert frame_ids(frames)[1][0] == 3
    assert torch.all(actions == -1)

    frames = generate("sprite_world", n_episodes=2, episode_len=6, frame_size=8, seed=0).frames
    x = VideoWindows(VideoData(frames, None, np.array([0, 6])), window=6).batch([0])[0][0]
    torch.testing.assert_close(x, torch.from_numpy(frames[:6]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert x.min() >= -1 and x.max() <= 1


def test_single_episode_is_split_by_time() -> None:
    data = synthetic_video([50])
    train = frame_ids(every_window(VideoWindows(data, window=3, split="train"))[0])
    val = frame_ids(every_window(VideoWindows(data, window=3, split="val"))[0])
    assert train.max() == 44 and val.min() == 45 and val.max() == 49


def test_episodes_shorter_than_one_window() -> None:
    data = synthetic_video([5, 5, 5])
    with pytest.raises(WorldbenchError, match=r"shorter than one window of 8 frames.*5, 5") as err:
        VideoWindows(data, window=8, split="train")
    assert_one_line_error(err)


# -----------------------------------------------------------------------------
# HDF5 files


def test_hdf5_round_trip(tmp_path) -> None:
    data = generate("pong", n_episodes=3, episode_len=5, frame_size=16, seed=0)
    path = tmp_path / "cache" / "pong.h5"
    save_hdf5(data, path)
    assert [p.name for p in path.parent.iterdir()] == ["pong.h5"]  # no temp file left behind
    loaded = load_hdf5(path)
    np.testing.assert_array_equal(loaded.frames, data.frames)
    np.testing.assert_array_equal(loaded.actions, data.actions)
    np.testing.assert_array_equal(loaded.episode_starts, data.episode_starts)
    assert loaded.n_actions == 3 and loaded.actions.dtype == np.int64 and loaded.frames.dtype == np.uint8


def test_frames_only_file_and_resize(tmp_path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "recording.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("frames", data=frames)

    loaded = load_hdf5(path)
    assert loaded.actions is None and loaded.n_actions is None
    np.testing.assert_array_equal(loaded.episode_starts, [0])

    small = load_hdf5(path, frame_size=16).frames
    assert small.shape == (6, 16, 16, 3) and small.dtype == np.uint8
    block_mean = frames[2, 4:6, 6:8, 1].astype(np.float64).mean()  # area average of a 2x2 block
    assert abs(int(small[2, 2, 3, 1]) - block_mean) <= 0.5
    assert load_hdf5(path, frame_size=40).frames.shape == (6, 40, 40, 3)
    np.testing.assert_array_equal(load_hdf5(path, frame_size=32).frames, frames)  # already that size: as stored


def write_h5(path, **datasets: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f.create_dataset(name, data=value)


FOUR_FRAMES = np.zeros((4, 8, 8, 3), np.uint8)
BAD_FILES = {
    # id: (how to make the file, expected message)
    "missing": (lambda p: None, r"dataset file '.*\.h5' does not exist; check the path"),
    "not-hdf5": (lambda p: p.write_text("not hdf5"), r"'.*\.h5' is not an HDF5 file"),
    "no-frames": (
        lambda p: write_h5(p, images=FOUR_FRAMES),
        r"'.*\.h5' has no 'frames' dataset \(it has: images\)",
    ),
    "float-frames": (
        lambda p: write_h5(p, frames=FOUR_FRAMES.astype(np.float32)),
        r"'.*\.h5'.*dtype float32, must be uint8",
    ),
    "rank-3-frames": (
        lambda p: write_h5(p, frames=FOUR_FRAMES[..., 0]),
        r"'.*\.h5'.*shape \[4, 8, 8\], must be \[N, H, W, 3\]",
    ),
    "actions-length": (
        lambda p: write_h5(p, frames=FOUR_FRAMES, actions=np.zeros(3, np.int64)),
        r"'.*\.h5'.*'actions' has shape \[3\], must be \[4\]",
    ),
    "episode-starts": (
        lambda p: write_h5(p, frames=FOUR_FRAMES, episode_starts=np.array([0, 3, 2])),
        r"'.*\.h5'.*'episode_starts' must be",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_get_one_line_errors(tmp_path, case: str) -> None:
    make_file, message = BAD_FILES[case]
    path = tmp_path / f"{case}.h5"
    make_file(path)
    with pytest.raises(WorldbenchError, match=message) as err:
        load_hdf5(path)
    assert_one_line_error(err)


@pytest.mark.parametrize("game", ["sprite_world", "pong"])
def test_policy_without_noop_always_moves(game: str) -> None:
    """noop=False: every transition's action is a move (action 0 appears only as the unused last-frame label)."""
    data = generate(game, n_episodes=6, episode_len=12, frame_size=16, seed=3, repeat_prob=0.5, noop=False)
    transitions = data.actions.reshape(6, 12)[:, :-1]  # [episodes, T-1]
    assert transitions.min() == 1 and set(np.unique(transitions)) == set(range(1, GAMES[game].n_actions))
    with_noop = generate(game, n_episodes=6, episode_len=12, frame_size=16, seed=3, repeat_prob=0.5)
    assert (with_noop.actions.reshape(6, 12)[:, :-1] == 0).any()


def test_noop_switch_must_be_a_bool() -> None:
    with pytest.raises(WorldbenchError, match="noop must be true or false"):
        generate("sprite_world", n_episodes=1, episode_len=4, frame_size=16, seed=0, noop="no")


def test_the_built_in_sprite_world_has_no_obstacles_so_every_move_moves_the_agent() -> None:
    """The harness's sprite_world (no walls, a spinner the agent walks over, no noop): each transition
    shows its action as a move of one cell, where the game's defaults block some moves."""
    from harness.schema import DEFAULT_DATASETS

    size, grid = 16, 4
    built_in = DEFAULT_DATASETS["sprite_world"]
    moved_as_told = {}
    for name, options in (("built-in", built_in.options), ("game defaults", {})):
        data = generate("sprite_world", n_episodes=12, episode_len=20, frame_size=size, seed=5,
                        repeat_prob=built_in.repeat_prob, options=options, noop=built_in.noop)
        hits = []
        for start in data.episode_starts:
            for t in range(start, start + 19):
                agent = sprite_cell(data.frames[t], games.AGENT_COLOUR, size // grid)
                agent_next = sprite_cell(data.frames[t + 1], games.AGENT_COLOUR, size // grid)
                d_row, d_col = games.SPRITE_MOVES[int(data.actions[t])]
                hits.append(agent_next == ((agent[0] + d_row) % grid, (agent[1] + d_col) % grid))
        moved_as_told[name] = float(np.mean(hits))
    assert moved_as_told["built-in"] == 1.0 and moved_as_told["game defaults"] < 0.95
