#!/usr/bin/env bash
# Build Remora's OCI images from the binaries `make` produced, with no base image
# (docs/install.md "Container images"). Run by `make image`; as root (buildah's default
# storage).
#
#   scripts/image.sh [--build DIR] [--out DIR] [--repo REPO] [--tag TAG] [NAME...]
#
# NAME is remora-proxy and/or remora-injector (both by default). Each image is made
# `from scratch`: a staged root filesystem holding the (stripped) binary, the Debian shared
# libraries it loads (ldd), the files it needs, /etc/passwd and /etc/group written here;
# then `buildah commit --timestamp $SOURCE_DATE_EPOCH`, so two builds of the same tree give
# the same digest. Output, in DIR (build/images):
#   <name>.tar            a docker-archive tagged REPO/<name>:TAG (kind load image-archive,
#                         ctr images import, podman load, skopeo copy accept it)
#   <name>.packages.txt   the Debian package (name version) of every file copied in
#   <name>.digest         the image's config digest (its ID) and manifest digest
# The image is removed from buildah's storage afterwards: the tarball is the product.
#
# The test images (test/integration/image.sh) use the same staging through
# `scripts/image.sh --extra NAME=BIN[,BIN...]`: an image with those host programs and
# their libraries, its entrypoint the first.
set -euo pipefail
cd "$(dirname "$0")/.."

build=build out=build/images repo=ghcr.io/remora-mesh tag=0.1.0
names=() extras=()
while (($#)); do
    case $1 in
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --repo) repo=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --extra) extras+=("$2"); shift 2 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "image.sh: unknown flag $1" >&2; exit 2 ;;
    *) names+=("$1"); shift ;;
    esac
done
((${#names[@]} || ${#extras[@]})) || names=(remora-proxy remora-injector)

die() { echo "image.sh: $*" >&2; exit 1; }
# buildah and skopeo log their storage driver choice and podman's CNI config at info/warn
# level; only errors are worth showing here (and a failing step's own output).
bh() { buildah --log-level error "$@"; }
sk() {
    if ! skopeo "$@" 2>"$work/skopeo.err"; then
        cat "$work/skopeo.err" >&2
        return 1
    fi
}
[[ $(id -u) -eq 0 ]] || die "run as root (buildah's default storage); try: sudo make image"
for t in buildah skopeo ldd dpkg-query strip; do
    command -v "$t" >/dev/null || die "$t not found: run make deps"
done

# The images' timestamp: the last commit's, so a tree builds the same image tomorrow.
if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH
ARCH_LIB=/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d /tmp/remora-image.XXXXXX)
ctrs=()
cleanup() {
    local c
    for c in "${ctrs[@]}"; do [[ -z $c ]] || bh rm "$c" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# ---- staging -------------------------------------------------------------------------
# Debian 12 is merged-/usr: /lib, /bin, /sbin, /lib64 are symlinks into /usr. The images
# keep that layout, so every path ldd or a program names resolves.
usr_path() { # a host path -> where it lives in the image
    case $1 in
    /lib/* | /bin/* | /sbin/* | /lib64/*) echo "/usr$1" ;;
    *) echo "$1" ;;
    esac
}
STAGE=
SOURCES=() # host paths copied in, for the packages list
stage_init() {
    STAGE=$work/$1/rootfs
    SOURCES=()
    mkdir -p "$STAGE"/{usr/bin,usr/sbin,usr/lib64,etc,tmp,"${ARCH_LIB#/}"}
    ln -s usr/bin "$STAGE/bin"
    ln -s usr/sbin "$STAGE/sbin"
    ln -s usr/lib "$STAGE/lib"
    ln -s usr/lib64 "$STAGE/lib64"
    chmod 1777 "$STAGE/tmp"
}
# stage_file HOST [IMAGE-PATH]: a regular file (symlinks followed), mode kept
stage_file() {
    local src=$1 dst=${2:-$(usr_path "$1")}
    [[ -e $src ]] || die "$src not found"
    [[ -e $STAGE$dst ]] && return 0
    mkdir -p "$(dirname "$STAGE$dst")"
    cp -L "$src" "$STAGE$dst"
    chmod "$(stat -L -c %a "$src")" "$STAGE$dst"
    SOURCES+=("$src")
}
# stage_libs FILE...: the shared libraries each loads, and the dynamic loader
stage_libs() {
    local f lib
    for f in "$@"; do
        while read -r lib; do
            [[ -z $lib ]] || stage_file "$lib"
        done < <(ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}')
    done
}
# stage_bin HOST-BINARY IMAGE-PATH [strip]: a program and its libraries
stage_bin() {
    local src=$1 dst=$2
    stage_file "$src" "$dst"
    if [[ ${3:-} == strip ]]; then
        # the debug info names the build directory; the image carries none of it
        strip --strip-all "$STAGE$dst"
        # a build tree's binaries are not a Debian package's: no packages.txt line
        unset 'SOURCES[-1]'
    fi
    stage_libs "$src"
}
stage_passwd() {
    # Written directly (useradd stamps today's date into /etc/shadow).
    cat >"$STAGE/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
remora-proxy:x:1337:1337:remora-proxy:/nonexistent:/sbin/nologin
remora-injector:x:65532:65532:remora-injector:/nonexistent:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
    cat >"$STAGE/etc/group" <<'EOF'
root:x:0:
remora-proxy:x:1337:
remora-injector:x:65532:
nogroup:x:65534:
EOF
    cat >"$STAGE/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF
    chmod 644 "$STAGE"/etc/{passwd,group,nsswitch.conf}
}
stage_ca_certs() {
    stage_file /etc/ssl/certs/ca-certificates.crt
}

# packages_of: "package version" for every staged host file, sorted, unique
packages_of() {
    local f pkg p
    for f in "${SOURCES[@]}"; do
        pkg=""
        for p in "$f" "$(readlink -f "$f")" "${f#/usr}" "/usr$f"; do
            pkg=$(dpkg-query -S "$p" 2>/dev/null | head -1 | cut -d: -f1) && [[ -n $pkg ]] && break
        done
        if [[ -z $pkg ]]; then
            # generated at install time by a package's maintainer script
            case $f in
            /etc/ssl/certs/ca-certificates.crt) pkg=ca-certificates ;;
            *) die "no Debian package owns $f" ;;
            esac
        fi
        dpkg-query -W -f='${Package} ${Version}\n' "$pkg"
    done | sort -u
}

# ---- commit ------------------------------------------------------------------------------
# commit NAME REF USER ENTRYPOINT-JSON [CMD-JSON]
commit() {
    local name=$1 ref=$2 user=$3 ep=$4 cmd=${5:-} ctr
    local tarball=$out/$name.tar
    # Every staged file is root-owned with a fixed mtime; buildah --timestamp clamps too.
    chown -R 0:0 "$STAGE"
    find "$STAGE" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    ctr=$(bh from --name "remora-image-$name-$$" scratch)
    ctrs+=("$ctr")
    bh copy --quiet "$ctr" "$STAGE" / >/dev/null
    local cfg=(--env "PATH=/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin"
        --user "$user" --workingdir / --entrypoint "$ep"
        --os linux --arch amd64
        --label "org.opencontainers.image.source=remora"
        --label "org.opencontainers.image.title=$name"
        --label "org.opencontainers.image.version=$tag"
        --created-by "scripts/image.sh" --author "")
    [[ -n $cmd ]] && cfg+=(--cmd "$cmd")
    bh config "${cfg[@]}" "$ctr"
    # containers-storage under a name of this build's own: another build or a test's
    # loaded image of the same tag is never touched.
    local tmpref=localhost/remora-image-build-$$/$name:$tag
    bh commit --quiet --timestamp "$SOURCE_DATE_EPOCH" --format oci --rm "$ctr" "$tmpref" \
        >"$work/$name.id"
    ctrs=("${ctrs[@]/$ctr/}")
    rm -f "$tarball"
    sk copy --quiet "containers-storage:$tmpref" "docker-archive:$tarball:$ref"
    bh rmi "$tmpref" >/dev/null
    local id manifest size
    id=$(cat "$work/$name.id")
    manifest=$(sk inspect --format '{{.Digest}}' "docker-archive:$tarball")
    printf 'id sha256:%s\nmanifest %s\n' "${id#sha256:}" "$manifest" >"$out/$name.digest"
    size=$(du -sb --apparent-size "$STAGE" | cut -f1)
    printf '%s: %s (%s)\n  image id sha256:%s\n  size %s bytes uncompressed (%.1f MB), tarball %s bytes\n' \
        "$name" "$ref" "$tarball" "${id#sha256:}" "$size" "$(awk -v s="$size" 'BEGIN{print s/1e6}')" \
        "$(stat -c %s "$tarball")"
}

# ---- the images -----------------------------------------------------------------------------
build_proxy() {
    stage_init remora-proxy
    stage_bin "$build/remora-proxy" /usr/bin/remora-proxy strip
    # The init container runs `remora-proxy iptables`, which runs iptables-restore /
    # ip6tables-restore and the -save variants: xtables-nft-multi and its symlinks, and
    # the extension modules it dlopens (which ldd does not show).
    local multi=/usr/sbin/xtables-nft-multi mod
    stage_bin "$multi" /usr/sbin/xtables-nft-multi
    for l in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save \
        iptables-nft iptables-nft-restore iptables-nft-save \
        ip6tables-nft ip6tables-nft-restore ip6tables-nft-save; do
        ln -s xtables-nft-multi "$STAGE/usr/sbin/$l"
    done
    [[ -d $ARCH_LIB/xtables ]] || die "$ARCH_LIB/xtables not found (iptables package)"
    for mod in "$ARCH_LIB"/xtables/*.so; do
        stage_file "$mod"
        stage_libs "$mod"
    done
    stage_passwd
    printf '%s\n' "${SOURCES[@]}" >"$work/remora-proxy.sources"
    packages_of >"$out/remora-proxy.packages.txt"
    commit remora-proxy "$repo/remora-proxy:$tag" 1337:1337 '["/usr/bin/remora-proxy"]'
}

build_injector() {
    stage_init remora-injector
    stage_bin "$build/remora-injector" /usr/bin/remora-injector strip
    # publish-ca-root talks HTTPS to the API server (its own CA bundle from the service
    # account); the system bundle is there for anything else that verifies a server.
    stage_ca_certs
    stage_passwd
    packages_of >"$out/remora-injector.packages.txt"
    commit remora-injector "$repo/remora-injector:$tag" 65532:65532 '["/usr/bin/remora-injector"]'
}

build_extra() { # NAME=BIN[,BIN...]: host programs and their libraries (test images)
    local name=${1%%=*} bins=${1#*=} b first=""
    stage_init "$name"
    IFS=, read -ra bl <<<"$bins"
    for b in "${bl[@]}"; do
        [[ -x $b ]] || b=$(command -v "$b") || die "$1: program not found"
        case $(readlink -f "$b") in
        "$PWD"/*) stage_bin "$b" "/usr/bin/$(basename "$b")" strip ;; # this tree's
        *) stage_bin "$b" "/usr/bin/$(basename "$b")" ;;
        esac
        [[ -n $first ]] || first=/usr/bin/$(basename "$b")
    done
    stage_ca_certs
    stage_passwd
    packages_of >"$out/$name.packages.txt"
    commit "$name" "$repo/$name:$tag" 0:0 "[\"$first\"]"
}

for n in "${names[@]}"; do
    case $n in
    remora-proxy)
        [[ -x $build/remora-proxy ]] || die "$build/remora-proxy not built: run make"
        build_proxy ;;
    remora-injector)
        [[ -x $build/remora-injector ]] || die "$build/remora-injector not built: run make"
        build_injector ;;
    *) die "unknown image $n (remora-proxy, remora-injector)" ;;
    esac
done
for e in "${extras[@]}"; do build_extra "$e"; done
