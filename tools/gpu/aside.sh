#!/usr/bin/env bash
# A device call carries the working tree and .dev, at most 64 MiB; the
# tracked tree alone is over 50 MB, so the binaries of a full call do not
# fit. `tools/gpu/aside.sh out` moves what a device call never reads out of
# the tree (the model goldens, bench/results, the fat binaries the built
# binaries embed, and unless KEEP_SAMPLES=1 the accuracy samples) into
# $ASIDE (default .git/kvd-aside: the same file system, never carried),
# with any more paths named after out (models/kvd-go-16m, 31 MB, when the
# call runs neither e2e nor accuracy), and prints what a call would carry;
# `tools/gpu/aside.sh back` puts them back, byte for byte, uncommitted
# changes included. A file made at a moved path in between (a rebuilt fat
# binary, a new result) is kept, and its aside copy left in $ASIDE with a
# message. Run `back` before committing: git sees the moved files as
# deleted.
set -euo pipefail
cd "$(dirname "$0")/../.."
ASIDE=${ASIDE:-$(git rev-parse --git-dir)/kvd-aside}
paths=(gateway/model/testdata/golden-kvd-go-16m gateway/model/testdata/golden bench/results kernels/cudabin/attention.fatbin kernels/cudabin/cache.fatbin kernels/cudabin/elementwise.fatbin kernels/cudabin/sampling.fatbin)
[ "${KEEP_SAMPLES:-}" = 1 ] || paths+=(bench/accuracy/samples-100.json.gz bench/accuracy/samples.json)
case ${1:-} in
out)
	for p in "${@:2}"; do
		case $p in
		/* | .. | ../* | */../* | */..) echo "aside.sh: $p: give a path inside the repository, relative to its top" >&2; exit 2 ;;
		esac
		paths+=("$p")
	done
	if [ -n "$(ls -A "$ASIDE" 2>/dev/null)" ]; then
		echo "aside.sh: $ASIDE is not empty (an earlier out without back?): run back first" >&2
		exit 1
	fi
	for p in "${paths[@]}"; do
		[ -e "$p" ] || continue
		mkdir -p "$ASIDE/$(dirname "$p")"
		mv "$p" "$ASIDE/$p"
	done
	sent=$( { git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null || :; find .dev -type f -exec stat -c %s {} + 2>/dev/null || :; } | awk '{s += $1} END {print s + 0}')
	echo "moved aside into $ASIDE; a device call would carry $((sent / 1048576)) MiB of the 64 allowed"
	;;
back)
	[ -n "$(ls -A "$ASIDE" 2>/dev/null)" ] || { echo "aside.sh: nothing in $ASIDE" >&2; exit 1; }
	kept=0
	while IFS= read -r -d '' f; do
		rel=${f#"$ASIDE"/}
		if [ -e "$rel" ] && ! cmp -s "$f" "$rel"; then
			echo "aside.sh: $rel changed while aside: kept the tree's; the old one stays in $f" >&2
			kept=1
			continue
		fi
		mkdir -p "$(dirname "$rel")"
		mv -f "$f" "$rel"
	done < <(find "$ASIDE" -type f -print0)
	find "$ASIDE" -depth -type d -empty -delete
	[ "$kept" = 1 ] && exit 1
	echo "put back"
	;;
*)
	echo "usage: tools/gpu/aside.sh out [more paths]|back" >&2
	exit 2
	;;
esac
