#!/usr/bin/env bash
# Build (once) a real kube-apiserver v1.20.2 from Debian bookworm's `kubernetes`
# source package, offline except for the Debian mirror already configured in apt.
#
# Result: ${KUBE_NFTPROXY_CACHE:-$HOME/.cache/kube-nftproxy}/kube-apiserver-v1.20.2
# Idempotent: if that binary exists and reports v1.20.2, exit 0 at once.
#
# Needs root (or passwordless sudo) for apt-get. Unattended: never reads stdin.
# See README.md in this directory for the why and the timings.
set -euo pipefail

K8S_VERSION=v1.20.2
# Debian source version of bookworm's kubernetes that contains the full 1.20.2
# tree plus vendor/. Override only if Debian publishes another +really1.20.2 upload.
DEB_VERSION_PREFERRED=${KUBE_NFTPROXY_K8S_DEB_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}
CACHE=${KUBE_NFTPROXY_CACHE:-$HOME/.cache/kube-nftproxy}
BIN=$CACHE/kube-apiserver-$K8S_VERSION
SRC_LIST=/etc/apt/sources.list.d/kube-nftproxy-src.sources

log() { printf '[real-apiserver/build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

binary_ok() {
    [[ -x $1 ]] && "$1" --version 2>/dev/null | grep -qw -- "$K8S_VERSION"
}

if binary_ok "$BIN"; then
    log "cached binary present: $BIN"
    exit 0
fi

exec </dev/null
export DEBIAN_FRONTEND=noninteractive

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    die "need root or passwordless sudo for apt-get"
fi

mkdir -p "$CACHE"
# One build at a time (parallel test binaries may all call this script).
exec 9>"$CACHE/.build.lock"
if command -v flock >/dev/null; then
    log "waiting for build lock $CACHE/.build.lock"
    flock 9
    if binary_ok "$BIN"; then
        log "cached binary appeared while waiting: $BIN"
        exit 0
    fi
fi

START=$(date +%s)

# ---------------------------------------------------------------------------
# 1. deb-src entry derived from the machine's own apt configuration.
#    The "main Debian archive" entry is the `deb` entry whose Suites contain the
#    release codename itself (not -security/-updates/-backports only).
# ---------------------------------------------------------------------------
# shellcheck disable=SC1091
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[[ -n $CODENAME ]] || die "no VERSION_CODENAME in /etc/os-release"
[[ $CODENAME == bookworm ]] || log "WARNING: release is '$CODENAME', recipe was made for bookworm"

# Prints a deb822 stanza with Types: deb-src, or nothing.
derive_src_stanza() {
    local f out
    # deb822 files (skip our own output)
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -e $f && $f != "$SRC_LIST" ]] || continue
        out=$(awk -v codename="$CODENAME" '
            function flush() {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no" && uris != "") {
                    n = split(suites, s, /[ \t]+/); hit = 0
                    for (i = 1; i <= n; i++) if (s[i] == codename) hit = 1
                    if (hit) {
                        print "Types: deb-src"
                        print "URIs: " uris
                        print "Suites: " suites
                        print "Components: " comps
                        if (signed != "") print "Signed-By: " signed
                        found = 1; exit
                    }
                }
                types = uris = suites = comps = signed = enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                key = tolower($1); sub(/:$/, "", key)
                val = $0; sub(/^[^:]*:[ \t]*/, "", val); sub(/[ \t]+$/, "", val)
                if (key == "types") types = val
                else if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "components") comps = val
                else if (key == "signed-by") signed = val
                else if (key == "enabled") enabled = tolower(val)
            }
            END { if (!found) flush() }
        ' "$f")
        if [[ -n $out ]]; then printf '%s\n' "$out"; return 0; fi
    done
    return 0
}

derive_src_stanza_oneline() {
    local f out
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -e $f ]] || continue
        out=$(awk -v codename="$CODENAME" '
            /^[ \t]*deb[ \t]/ {
                line = $0; signed = ""
                if (match(line, /\[[^]]*\]/)) {
                    opts = substr(line, RSTART + 1, RLENGTH - 2)
                    line = substr(line, 1, RSTART - 1) substr(line, RSTART + RLENGTH)
                    n = split(opts, o, /[ \t]+/)
                    for (i = 1; i <= n; i++) if (o[i] ~ /^signed-by=/) { signed = o[i]; sub(/^signed-by=/, "", signed) }
                }
                n = split(line, w, /[ \t]+/)
                # w[1] may be empty if the line started with blanks
                k = (w[1] == "") ? 2 : 1
                if (w[k + 2] != codename) next
                comps = ""
                for (i = k + 3; i <= n; i++) if (w[i] != "") comps = comps (comps == "" ? "" : " ") w[i]
                print "Types: deb-src"
                print "URIs: " w[k + 1]
                print "Suites: " w[k + 2]
                print "Components: " comps
                if (signed != "") print "Signed-By: " signed
                exit
            }
        ' "$f")
        if [[ -n $out ]]; then printf '%s\n' "$out"; return 0; fi
    done
    return 0
}

STANZA=$(derive_src_stanza)
[[ -n $STANZA ]] || STANZA=$(derive_src_stanza_oneline)
[[ -n $STANZA ]] || die "found no apt 'deb' entry for suite '$CODENAME' to derive a deb-src entry from"
STANZA="# Written by kube-nftproxy integration/real-apiserver/build.sh (derived from the local apt sources).
$STANZA"

if [[ -f $SRC_LIST ]] && [[ $(cat "$SRC_LIST") == "$STANZA" ]]; then
    log "deb-src entry already present: $SRC_LIST"
else
    log "writing deb-src entry $SRC_LIST:"
    printf '%s\n' "$STANZA" | sed 's/^/    /' >&2
    printf '%s\n' "$STANZA" | "${SUDO[@]}" tee "$SRC_LIST" >/dev/null
fi

log "apt-get update"
"${SUDO[@]}" apt-get update -q >&2
log "apt-get install build/run dependencies"
"${SUDO[@]}" apt-get install -y -q --no-install-recommends \
    golang-go rsync etcd-server golang-github-modern-go-reflect2-dev openssl make >&2

# ---------------------------------------------------------------------------
# 2. pick the source version: the preferred one if apt knows it, else the
#    newest bookworm upload that still is "+really1.20.2".
# ---------------------------------------------------------------------------
mapfile -t SRC_VERSIONS < <(apt-cache showsrc kubernetes 2>/dev/null | awk '/^Version:/ { print $2 }' | sort -u)
log "kubernetes source versions known to apt: ${SRC_VERSIONS[*]:-none}"
DEB_VERSION=
for v in "${SRC_VERSIONS[@]}"; do
    [[ $v == "$DEB_VERSION_PREFERRED" ]] && DEB_VERSION=$v
done
if [[ -z $DEB_VERSION ]]; then
    for v in "${SRC_VERSIONS[@]}"; do
        [[ $v == *really1.20.2* ]] || continue
        if [[ -z $DEB_VERSION ]] || dpkg --compare-versions "$v" gt "$DEB_VERSION"; then
            DEB_VERSION=$v
        fi
    done
fi
[[ -n $DEB_VERSION ]] || die "no kubernetes source with the 1.20.2 tree (+really1.20.2) in apt; need $DEB_VERSION_PREFERRED"
log "using kubernetes source $DEB_VERSION"

# ---------------------------------------------------------------------------
# 3. download + unpack under the cache dir (never inside the repository)
# ---------------------------------------------------------------------------
BUILD=$CACHE/build
rm -rf "$BUILD"
mkdir -p "$BUILD"
cleanup() { rm -rf "$BUILD"; }
trap cleanup EXIT
cd "$BUILD"
# apt-get source drops privileges to _apt when it can; the dir must be writable for it.
chmod 0777 "$BUILD" 2>/dev/null || true

log "apt-get source --download-only kubernetes=$DEB_VERSION"
apt-get source -q --download-only "kubernetes=$DEB_VERSION" >&2
ORIG=$(ls kubernetes_*.orig.tar.* 2>/dev/null | head -n 1)
[[ -n $ORIG ]] || die "orig tarball not downloaded"
log "unpacking $ORIG ($(du -h "$ORIG" | cut -f1))"
tar xf "$ORIG"
SRC=$(find . -maxdepth 1 -mindepth 1 -type d -name 'kubernetes*' | head -n 1)
[[ -n $SRC && -d $SRC/vendor && -d $SRC/cmd/kube-apiserver ]] || die "unexpected tarball layout (need cmd/kube-apiserver and vendor/)"
cd "$SRC"

# ---------------------------------------------------------------------------
# 4. REQUIRED fix: vendored reflect2 v1.0.1 segfaults under Go >= 1.18
#    (runtime.mapiterinit via reflect2.(*UnsafeMapType).UnsafeIterate, crashes
#    the apiserver about a minute after start). Use Debian's reflect2 1.0.2.
# ---------------------------------------------------------------------------
R2=/usr/share/gocode/src/github.com/modern-go/reflect2
[[ -d $R2 ]] || die "$R2 missing (golang-github-modern-go-reflect2-dev)"
log "replacing vendor/github.com/modern-go/reflect2 with Debian's $(dpkg-query -W -f '${Version}' golang-github-modern-go-reflect2-dev)"
rm -rf vendor/github.com/modern-go/reflect2
cp -r "$R2" vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/go.mod

# ---------------------------------------------------------------------------
# 5. build like debian/rules: GOPATH mode, no network
# ---------------------------------------------------------------------------
export GOPATH=$PWD/.go CGO_ENABLED=0 GOPROXY=off GOFLAGS= GOCACHE=$BUILD/gocache GOTOOLCHAIN=local
mkdir -p .go/src/k8s.io
ln -s ../../.. .go/src/k8s.io/kubernetes
log "go: $(go version)"
log "building cmd/kube-apiserver (nice -n 10; a cold build takes ~10-15 min on 2 cores)"
nice -n 10 make WHAT=cmd/kube-apiserver KUBE_GIT_VERSION="$K8S_VERSION" KUBE_GIT_TREE_STATE=clean >&2
OUT=_output/bin/kube-apiserver
[[ -x $OUT ]] || OUT=$(find _output -type f -name kube-apiserver -perm -u+x | head -n 1)
[[ -n $OUT && -x $OUT ]] || die "build produced no kube-apiserver binary"
binary_ok "$OUT" || die "built binary does not report $K8S_VERSION: $("$OUT" --version 2>&1 || true)"

cp "$OUT" "$BIN.tmp.$$"
chmod 0755 "$BIN.tmp.$$"
mv -f "$BIN.tmp.$$" "$BIN"

cd /
cleanup
trap - EXIT
END=$(date +%s)
log "done in $((END - START)) s: $BIN ($(du -h "$BIN" | cut -f1)), $("$BIN" --version)"
