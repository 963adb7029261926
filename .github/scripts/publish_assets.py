"""Publish a gate report's pictures where GitHub renders them, and point the PR comment at them.

The comment job (.github/workflows/bench-gate-comment.yml) runs this from the base repository's own checkout,
never the pull request's code, on the report artifact the gate uploaded, which is untrusted data: only plain
files with safe names and the expected endings are published, each under a size limit. They go into one folder
per pull request (`--dest`, e.g. pr-12) on an orphan branch of the base repository (`--branch`), in a commit made
without touching the checkout's working tree or index (a private index file), and pushed to `--remote`. The
folder holds the latest report only; the links are pinned to the new commit, so an older comment's pictures
stay as they were. The markdown (report.md) is written to `--out` with each published file's relative link
replaced by its pinned URL: images by their raw URL, the HTML report by `--html-url` if given (e.g. the run's
artifact) else its page on GitHub.

Standard library and git only: the comment job installs nothing.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PUBLISHED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.(png|gif|svg|html)$")  # flat, safe, expected kinds
MAX_FILE_BYTES = 5_000_000
MAX_TOTAL_BYTES = 20_000_000
PUSH_ATTEMPTS = 4  # another PR's comment job may push the branch between our fetch and push
AUTHOR = {"GIT_AUTHOR_NAME": "worldbench-bot", "GIT_AUTHOR_EMAIL": "worldbench-bot@users.noreply.github.com",
          "GIT_COMMITTER_NAME": "worldbench-bot", "GIT_COMMITTER_EMAIL": "worldbench-bot@users.noreply.github.com"}


class PublishError(Exception):
    """A problem the workflow log should show in one line."""


def git(repo: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", *args], cwd=repo, env={**os.environ, **(env or {})}, capture_output=True,
                            text=True)
    if check and result.returncode != 0:
        raise PublishError(f"git {args[0]} failed: {result.stderr.strip().splitlines()[-1:] or result.returncode}")
    return result


def publishable(report: Path) -> list[Path]:
    """The report dir's files that may be published: regular files (no links) with a safe flat name and an image
    or HTML ending, within the size limits. Anything else is left out, not an error."""
    files, total = [], 0
    for path in sorted(report.iterdir()):
        if path.is_symlink() or not path.is_file() or not PUBLISHED.match(path.name):
            continue
        size = path.stat().st_size
        if size > MAX_FILE_BYTES or total + size > MAX_TOTAL_BYTES:
            print(f"publish_assets: left out {path.name} ({size:,} bytes): over the size limit", file=sys.stderr)
            continue
        total += size
        files.append(path)
    return files


def check_dest(dest: str) -> str:
    """The folder on the assets branch: one or two plain path parts (pr-12, or pr-12/run-345)."""
    parts = dest.strip("/").split("/")
    if not (1 <= len(parts) <= 2 and all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", p) for p in parts)):
        raise PublishError(f"--dest {dest!r}: use one or two plain folder names, e.g. pr-12")
    return "/".join(parts)


def commit_files(repo: Path, remote: str, branch: str, dest: str, files: list[Path]) -> str:
    """Fetch the branch (if it exists), commit `files` as `dest`/ on top of it (replacing what `dest` held) and
    push; the new commit's sha. The checkout's own index and working tree are left alone."""
    for _ in range(PUSH_ATTEMPTS):
        fetched = git(repo, "fetch", "--quiet", "--depth=1", remote, f"refs/heads/{branch}", check=False)
        parent = git(repo, "rev-parse", "FETCH_HEAD").stdout.strip() if fetched.returncode == 0 else ""
        with tempfile.TemporaryDirectory() as scratch:
            index = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
            git(repo, "read-tree", *([parent] if parent else ["--empty"]), env=index)
            git(repo, "rm", "-r", "--cached", "--quiet", "--ignore-unmatch", "--", dest, env=index)
            for path in files:
                blob = git(repo, "hash-object", "-w", "--", str(path)).stdout.strip()
                git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{dest}/{path.name}", env=index)
            tree = git(repo, "write-tree", env=index).stdout.strip()
        message = f"worldbench report pictures for {dest}"
        commit = git(repo, "commit-tree", tree, *(["-p", parent] if parent else []), "-m", message,
                     env=AUTHOR).stdout.strip()
        if git(repo, "push", "--quiet", remote, f"{commit}:refs/heads/{branch}", check=False).returncode == 0:
            return commit
    raise PublishError(f"could not push {branch} after {PUSH_ATTEMPTS} attempts (it kept moving)")


def pin_links(markdown: str, names: list[str], urls: dict[str, str]) -> str:
    """Each link or image source naming a published file, `](name)` or `src="name"`, now its URL."""
    for name in names:
        markdown = markdown.replace(f"]({name})", f"]({urls[name]})").replace(f'src="{name}"', f'src="{urls[name]}"')
    return markdown


def publish(report: Path, repo: Path, remote: str, slug: str, branch: str, dest: str, html_url: str = "",
            server: str = "https://github.com", raw: str = "https://raw.githubusercontent.com") -> tuple[str, str]:
    """Publish the report's pictures; (the commit, report.md with pinned links)."""
    dest = check_dest(dest)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", slug):
        raise PublishError(f"--repo {slug!r}: expected OWNER/NAME")
    files = publishable(report)
    markdown_file = report / "report.md"
    markdown = markdown_file.read_text(encoding="utf-8") if markdown_file.is_file() else ""
    if not files:
        return "", markdown
    commit = commit_files(repo, remote, branch, dest, files)
    urls = {path.name: f"{raw}/{slug}/{commit}/{dest}/{path.name}" for path in files}
    for name in urls:
        if name.endswith(".html"):
            urls[name] = html_url or f"{server}/{slug}/blob/{commit}/{dest}/{name}"
    return commit, pin_links(markdown, list(urls), urls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, required=True, help="the report dir (the gate's --out)")
    parser.add_argument("--repo", required=True, help="OWNER/NAME of the base repository (the links' repository)")
    parser.add_argument("--dest", required=True, help="folder on the branch, e.g. pr-12")
    parser.add_argument("--branch", default="worldbench-assets", help="the assets branch (created as an orphan)")
    parser.add_argument("--remote", default="origin", help="the git remote to push to (default origin)")
    parser.add_argument("--checkout", type=Path, default=Path.cwd(), help="a git checkout with that remote")
    parser.add_argument("--html-url", default="", help="where the comment links the HTML report")
    parser.add_argument("--server", default="https://github.com")
    parser.add_argument("--raw", default="https://raw.githubusercontent.com", help="where GitHub serves raw files")
    parser.add_argument("--out", type=Path, required=True, help="write the markdown with pinned links here")
    args = parser.parse_args(argv)
    try:
        commit, markdown = publish(args.report, args.checkout, args.remote, args.repo, args.branch, args.dest,
                                   args.html_url, args.server, args.raw)
    except (PublishError, OSError) as err:
        print(f"publish_assets: {err}", file=sys.stderr)
        return 1
    args.out.write_text(markdown, encoding="utf-8")
    print(f"published to {args.branch} at {commit}" if commit else "nothing to publish")
    return 0


if __name__ == "__main__":
    sys.exit(main())
