#!/usr/bin/env bash
# Fetch the benchmark music corpus: freely licensed game soundtracks packaged by
# Debian (all in `main`, so DFSG-free and redistributable). Works without root:
# nothing is installed, the .deb files are only downloaded and unpacked with
# `dpkg -x` into a cache directory.
#
# Usage: scripts/fetch_corpus.sh [CACHE_DIR]
#   CACHE_DIR defaults to ${EARMARK_CORPUS_DIR:-$HOME/.cache/earmark/corpus}
#
# Layout:
#   <cache>/debs/<package>_<version>_all.deb
#   <cache>/extracted/<package>/...            (dpkg -x output)
#   <cache>/apt-lists, <cache>/apt-cache       (private apt state, non-root only)
#
# Idempotent: packages already downloaded or extracted are skipped, and apt is
# not contacted at all once every package is extracted.
set -euo pipefail

CACHE_DIR="${1:-${EARMARK_CORPUS_DIR:-$HOME/.cache/earmark/corpus}}"
PACKAGES=(drascula-music hyperrogue-music singularity-music planetblupi-music-ogg asc-music)

mkdir -p "$CACHE_DIR/debs" "$CACHE_DIR/extracted"
CACHE_DIR="$(cd "$CACHE_DIR" && pwd)"
DEB_DIR="$CACHE_DIR/debs"
EXTRACT_DIR="$CACHE_DIR/extracted"

log() { printf '[fetch_corpus] %s\n' "$*" >&2; }

# A package counts as done only once its extraction finished; the marker is
# written last so an interrupted `dpkg -x` is redone on the next run.
is_extracted() { [[ -f "$EXTRACT_DIR/$1/.extracted" ]]; }
deb_for() { compgen -G "$DEB_DIR/${1}_*.deb" | head -n 1 || true; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! is_extracted "$pkg" && [[ -z "$(deb_for "$pkg")" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    APT_OPTS=()
    # Refreshing the system lists needs root. Without it, point apt at private
    # lists/cache directories inside the corpus cache: `update` and `download`
    # then only write where we own the files, while sources.list and the
    # trusted keyrings are still read from the system.
    if ! apt-get update -qq >/dev/null 2>&1; then
        log "system 'apt-get update' failed (not root?); using private apt state in $CACHE_DIR"
        mkdir -p "$CACHE_DIR/apt-lists/partial" "$CACHE_DIR/apt-cache/archives/partial"
        APT_OPTS=(
            -o "Dir::State::Lists=$CACHE_DIR/apt-lists"
            -o "Dir::Cache=$CACHE_DIR/apt-cache"
        )
        apt-get "${APT_OPTS[@]}" update -qq
    fi
    log "downloading: ${missing[*]}"
    # apt-get download writes into the current directory. As root, apt drops to
    # the _apt user for the fetch and warns when that user cannot write here;
    # the download falls back to root and still succeeds, so the warning is muted.
    (cd "$DEB_DIR" && apt-get "${APT_OPTS[@]}" -q download "${missing[@]}" 2>&1 \
        | grep -v "couldn't be accessed by user '_apt'" >&2 || true)
    for pkg in "${missing[@]}"; do
        [[ -n "$(deb_for "$pkg")" ]] || { log "ERROR: download of $pkg failed"; exit 1; }
    done
fi

for pkg in "${PACKAGES[@]}"; do
    if is_extracted "$pkg"; then
        log "$pkg: already extracted"
        continue
    fi
    deb="$(deb_for "$pkg")"
    log "$pkg: extracting $(basename "$deb")"
    rm -rf "${EXTRACT_DIR:?}/$pkg"
    mkdir -p "$EXTRACT_DIR/$pkg"
    dpkg -x "$deb" "$EXTRACT_DIR/$pkg"
    touch "$EXTRACT_DIR/$pkg/.extracted"
done

# Summary: count and duration of audio that ffmpeg can decode, per package.
# The duration comes from the same decoder the benchmark uses (bench.corpus),
# so what is reported here is exactly what the benchmark will see.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if "$PYTHON" -c "import imageio_ffmpeg" 2>/dev/null; then
    (cd "$REPO_ROOT" && "$PYTHON" -m bench.corpus --stats "$CACHE_DIR")
else
    log "imageio-ffmpeg not importable with $PYTHON (set PYTHON=...); counting files only"
    find "$EXTRACT_DIR" -type f \( -iname '*.ogg' -o -iname '*.mp3' -o -iname '*.flac' \
        -o -iname '*.wav' -o -iname '*.it' -o -iname '*.mod' -o -iname '*.xm' -o -iname '*.s3m' \) \
        | sed -E 's/.*\.//' | tr '[:upper:]' '[:lower:]' | sort | uniq -c
fi
echo "$CACHE_DIR"
