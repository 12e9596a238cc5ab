#!/usr/bin/env bash
# Builds the twinbridge Debian packages:
#   packaging/build-debs.sh [--no-build] [amd64] [arm64] [armhf]
# (all three by default; --no-build packages the binaries already built). Per architecture: a build
# with the `dist` profile (release made small: opt-level "s", fat LTO, one codegen unit,
# panic = "abort"; see the workspace Cargo.toml) without the `demo` feature, the
# man page from the built binary's --help (help2man), `cargo deb`, a smoke test of the binary
# (--version; check-config of the shipped config.toml, without and with the gateway's key) and
# lintian, which must report no error and no warning. Binaries of another architecture run
# under qemu-user. The packages land in $CARGO_TARGET_DIR/debs (default target/debs).
#
# Needs: cargo-deb (`cargo install cargo-deb --locked`), help2man, lintian, dpkg-dev; for arm64
# and armhf also gcc-aarch64-linux-gnu / gcc-arm-linux-gnueabihf, qemu-user and
# `rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf`
# (.cargo/config.toml names the cross linkers and C compilers).
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-$PWD/target}
out=$target_dir/debs
host=$(rustc -vV | sed -n 's/^host: //p')
build=1
if [ "${1:-}" = --no-build ]; then build=0; shift; fi
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64 armhf)
for tool in cargo-deb help2man lintian dpkg-shlibdeps; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-debs.sh: missing $tool (see the top of this script)" >&2; exit 1; }
done
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

for arch in "${arches[@]}"; do
  case $arch in
    amd64) triple=x86_64-unknown-linux-gnu qemu=(qemu-x86_64 -L /usr/x86_64-linux-gnu) ;;
    arm64) triple=aarch64-unknown-linux-gnu qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu) ;;
    armhf) triple=armv7-unknown-linux-gnueabihf qemu=(qemu-arm -L /usr/arm-linux-gnueabihf) ;;
    *) echo "build-debs.sh: unknown architecture $arch (amd64, arm64, armhf)" >&2; exit 2 ;;
  esac
  # The native build lands in target/dist, a cross build in target/<triple>/dist.
  if [ "$triple" = "$host" ]; then
    target_args=() qemu=() release=$target_dir/dist
  else
    target_args=(--target "$triple") release=$target_dir/$triple/dist
  fi
  if [ "$build" = 1 ]; then
    echo "== $arch ($triple): cargo build --profile dist --no-default-features"
    cargo build --profile dist --locked -p twinbridge --no-default-features "${target_args[@]}"
  fi

  # help2man runs the program by path: a wrapper runs the built binary (under qemu if foreign).
  wrap=$scratch/$arch/twinbridge
  mkdir -p "$(dirname "$wrap")"
  printf '#!/bin/sh\nexec %s "$@"\n' "${qemu[*]} $release/twinbridge" >"$wrap"
  chmod 755 "$wrap"

  echo "== $arch: smoke test"
  "$wrap" --version
  # As shipped, the gateway's key is the one thing missing (exit 78, naming keys_file) ...
  rc=0
  smoke_err=$("$wrap" check-config --config packaging/config.toml 2>&1 >/dev/null) || rc=$?
  if [ "$rc" != 78 ] || ! grep -q 'keys_file' <<<"$smoke_err" \
     || ! grep -q '^1 error in the configuration' <<<"$smoke_err"; then
    echo "$smoke_err" >&2
    echo "build-debs.sh: check-config of the shipped config.toml without a key: exit $rc, expected 78 with the one error about keys_file" >&2
    exit 1
  fi
  echo "check-config without the gateway's key: exit 78, on keys_file only (as expected)"
  # ... and with it (a systemd credential, as LoadCredential= provides) the file is valid.
  mkdir -p "$scratch/creds"
  printf 'Z3c=' >"$scratch/creds/gw-01"
  "$wrap" check-config --config packaging/config.toml --credentials-dir "$scratch/creds"

  # The man page, from --help of the binary being packaged: it follows the CLI. One section
  # per subcommand (its own --help, verbatim) besides help2man's page of the main --help.
  commands=$scratch/$arch/commands.h2m
  {
    echo '[COMMANDS]'
    echo 'Each command has its own options; \fBtwinbridge\fR \fICOMMAND\fR \fB\-\-help\fR prints them.'
    for cmd in $("$wrap" help | sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z-]*\)  .*/\1/p'); do
      [ "$cmd" = help ] && continue
      printf '.SS "twinbridge %s"\n.nf\n' "$cmd"
      # roff: backslashes escaped, a leading . or ' made literal.
      "$wrap" "$cmd" --help | sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"
      echo '.fi'
    done
  } >"$commands"
  help2man --no-info --section=1 \
    --name='edge gateway agent: serial field devices <-> Azure IoT Hub device twins' \
    --include=packaging/twinbridge.h2m --include="$commands" \
    --output="$scratch/$arch/twinbridge.1" "$wrap"
  gzip -9n <"$scratch/$arch/twinbridge.1" >"$release/twinbridge.1.gz"

  echo "== $arch: cargo deb"
  # --profile: the assets' target/release/ prefix then names target/dist/.
  deb=$(cargo deb -p twinbridge --no-build --profile dist "${target_args[@]}" --output "$out" | tail -n 1)
  case $deb in
    */twinbridge_*_"$arch".deb) ;;
    *) echo "build-debs.sh: cargo deb did not name a twinbridge_*_$arch.deb: $deb" >&2; exit 1 ;;
  esac
  echo "$deb: $(stat -c %s "$deb") bytes, installed $(dpkg-deb -f "$deb" Installed-Size) KiB; binary $(stat -c %s "$release/twinbridge") bytes"

  echo "== $arch: lintian"
  lintian --fail-on error,warning --display-info "$deb"
  echo "lintian: no errors, no warnings"
done
