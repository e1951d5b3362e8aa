#!/usr/bin/env bash
# Builds kube-nftproxy's container image: a scratch image holding only the release
# binary, the shared libraries `ldd` names for it, and the CA certificates.
#
#   deploy/build-image.sh                     # build the binary, the rootfs and, with podman, the image
#   deploy/build-image.sh --print-image       # print the image reference and exit
#   deploy/build-image.sh --rootfs-only DIR   # build the binary and the rootfs in DIR (no image)
#
# Steps: `cargo build --release --locked`; the rootfs (usr/local/bin/kube-nftproxy, its
# libraries at their paths, etc/ssl/certs/ca-certificates.crt, etc/nsswitch.conf); as root,
# a check that the binary starts in it (`chroot ROOTFS kube-nftproxy --help`); then, if
# podman is installed, `podman build --target prebuilt` of the top-level Containerfile from
# that rootfs (nothing is pulled), and the same check on the image's exported filesystem.
# The Containerfile's own build stage runs this script with --rootfs-only, so CI and the
# image build assemble the rootfs with the same commands.
#
# The tag is v + Cargo.toml's version (the manifests in deploy/ reference it; the test
# integration/deploy.rs checks they agree). Environment:
#   IMAGE_REPOSITORY   default ghcr.io/kube-nftproxy/kube-nftproxy
#   IMAGE_TAG          default v<version>
#   CARGO_TARGET_DIR   honoured, as cargo does
#   KUBE_NFTPROXY_BIN  with --rootfs-only: put this binary in the rootfs instead of building
#                      the release one (integration/kernel.rs checks `trace --live` in a
#                      rootfs of the debug build)
# Push to your own registry:
#   podman tag ghcr.io/kube-nftproxy/kube-nftproxy:v0.1.0 registry.example.com/kube-nftproxy:v0.1.0
#   podman push registry.example.com/kube-nftproxy:v0.1.0
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

version=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || { echo "build-image.sh: no version in Cargo.toml's [package]" >&2; exit 1; }
image="${IMAGE_REPOSITORY:-ghcr.io/kube-nftproxy/kube-nftproxy}:${IMAGE_TAG:-v$version}"

rootfs_only=""
case "${1:-}" in
  --print-image) echo "$image"; exit 0 ;;
  --rootfs-only)
    [ -n "${2:-}" ] || { echo "usage: $0 --rootfs-only DIR" >&2; exit 2; }
    rootfs_only=$2 ;;
  "") ;;
  *) echo "usage: $0 [--print-image | --rootfs-only DIR]" >&2; exit 2 ;;
esac

target_dir=${CARGO_TARGET_DIR:-$repo/target}
if [ -n "$rootfs_only" ] && [ -n "${KUBE_NFTPROXY_BIN:-}" ]; then
  bin=$KUBE_NFTPROXY_BIN
  echo "==> using $bin (KUBE_NFTPROXY_BIN)"
else
  echo "==> cargo build --release --locked --bin kube-nftproxy"
  cargo build --release --locked --bin kube-nftproxy
  bin="$target_dir/release/kube-nftproxy"
fi

# Starts the binary inside a root filesystem: proves the libraries are all there.
check_rootfs() {
  if [ "$(id -u)" -ne 0 ] || ! command -v chroot >/dev/null; then
    echo "==> (not root: skipping the chroot check of $1)"
    return
  fi
  echo "==> chroot $1 /usr/local/bin/kube-nftproxy --help"
  chroot "$1" /usr/local/bin/kube-nftproxy --help >/dev/null
}

assemble_rootfs() {
  local dir=$1 lib
  rm -rf "$dir"
  mkdir -p "$dir/usr/local/bin" "$dir/etc/ssl/certs"
  cp "$bin" "$dir/usr/local/bin/kube-nftproxy"
  # `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
  # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file. A static binary needs none.
  if ldd "$bin" >/dev/null 2>&1; then
    for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
      mkdir -p "$dir$(dirname "$lib")"
      cp -L "$lib" "$dir$lib"
    done
  fi
  cp -L /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
  # Host names (a control-plane endpoint given by name) are looked up in /etc/hosts, then
  # DNS: glibc's built-in files and dns modules, no NSS library needed.
  printf 'hosts: files dns\n' > "$dir/etc/nsswitch.conf"
  echo "==> rootfs $dir: $(du -sh "$dir" | cut -f1) (binary $(du -h "$dir/usr/local/bin/kube-nftproxy" | cut -f1))"
  (cd "$dir" && find . -type f | sort | sed 's/^/    /')
  check_rootfs "$dir"
}

if [ -n "$rootfs_only" ]; then
  assemble_rootfs "$rootfs_only"
  exit 0
fi

context="$target_dir/image-context"
assemble_rootfs "$context/rootfs"

if ! command -v podman >/dev/null; then
  echo "==> podman not found: rootfs ready in $context/rootfs, no image built"
  exit 0
fi

echo "==> podman build --target prebuilt -t $image"
podman build --target prebuilt -f "$repo/Containerfile" -t "$image" "$context"

# The image as it would run: export its filesystem and start the binary in it
# (`podman run` may be unavailable where this is built).
check=$(mktemp -d)
trap 'rm -rf "$check"' EXIT
cid=$(podman create "$image")
podman export "$cid" | tar -x -C "$check"
podman rm "$cid" >/dev/null
check_rootfs "$check"
echo "==> built $image ($(podman image inspect --format '{{.Size}}' "$image") bytes)"
echo "    push: podman push $image   (or podman tag it to your registry first)"
