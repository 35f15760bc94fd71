#!/usr/bin/env bash
# A small internet on this machine, with real NAT, for issue 18 (reach):
#
#   public segment 10.200.0.0/24 (a bridge in namespace ${P}-pub)
#     ${P}-dir    10.200.0.2    directory
#     ${P}-relay  10.200.0.3    relay
#     ${P}-r1     10.200.0.11   home router 1 (masquerade NAT, no port forwarding)
#     ${P}-r2     10.200.0.12   home router 2 (the same)
#   home 1: ${P}-h1 192.168.1.2 behind ${P}-r1 (192.168.1.1)
#   home 2: ${P}-h2 192.168.2.2 behind ${P}-r2 (192.168.2.1)
#
# Usage (root; installs iproute2 and nftables where missing):
#   scripts/testnet.sh up       build it (removes an old one first)
#   scripts/testnet.sh check    build it, show what crosses and what does
#                               not, remove it (exit 1 if NAT leaks)
#   scripts/testnet.sh down     remove every namespace it made
#   ip netns exec openred-h1 COMMAND   run something in a home
#
# TESTNET_PREFIX (default `openred`) names the namespaces, so that two runs
# can live side by side. Every address is a private range inside the
# namespaces; nothing here touches the machine's own interfaces.
set -euo pipefail
cd "$(dirname "$0")/.."

P=${TESTNET_PREFIX:-openred}
NAMESPACES=("$P-pub" "$P-dir" "$P-relay" "$P-r1" "$P-r2" "$P-h1" "$P-h2")

log() { printf '== %s\n' "$*" >&2; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

need_tools() {
  [ "$(id -u)" = 0 ] || fail "the test network needs root (ip netns, nftables)"
  local missing=()
  command -v ip >/dev/null || missing+=(iproute2)
  command -v nft >/dev/null || missing+=(nftables)
  command -v python3 >/dev/null || missing+=(python3)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Stops every process still running in a namespace of this network (servers,
# nodes), then removes the namespaces.
down() {
  local ns
  for ns in "${NAMESPACES[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  done
  for ns in "${NAMESPACES[@]}"; do
    ip netns del "$ns" 2>/dev/null || true
  done
}

# A host on the public bridge: veth from namespace $1 (address $2) to the
# bridge in $P-pub.
public_host() {
  local ns=$1 address=$2 port="p-${1#"$P"-}"
  ip link add "$port" netns "$P-pub" type veth peer name wan netns "$ns"
  in_ns "$P-pub" ip link set "$port" master br0 up
  in_ns "$ns" ip addr add "$address/24" dev wan
  in_ns "$ns" ip link set wan up
}

# A home: router namespace $1 with WAN $2 on the public bridge, LAN subnet
# 192.168.$3.0/24, one host namespace $4 at .2. The router masquerades what
# leaves the LAN and drops every new connection from the WAN side.
home() {
  local router=$1 wan=$2 net=$3 host=$4
  public_host "$router" "$wan"
  ip link add lan netns "$router" type veth peer name eth0 netns "$host"
  in_ns "$router" ip addr add "192.168.$net.1/24" dev lan
  in_ns "$router" ip link set lan up
  in_ns "$router" sysctl -qw net.ipv4.ip_forward=1
  in_ns "$host" ip addr add "192.168.$net.2/24" dev eth0
  in_ns "$host" ip link set eth0 up
  in_ns "$host" ip route add default via "192.168.$net.1"
  in_ns "$router" nft -f - <<EOF
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade
  }
}
table inet filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" oifname "wan" accept
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state new drop
  }
}
EOF
}

up() {
  down
  local ns
  for ns in "${NAMESPACES[@]}"; do
    ip netns add "$ns"
    in_ns "$ns" ip link set lo up
  done
  in_ns "$P-pub" ip link add br0 type bridge
  in_ns "$P-pub" ip link set br0 up
  public_host "$P-dir" 10.200.0.2
  public_host "$P-relay" 10.200.0.3
  home "$P-r1" 10.200.0.11 1 "$P-h1"
  home "$P-r2" 10.200.0.12 2 "$P-h2"
  log "test network up: ${NAMESPACES[*]}"
}

# Starts a TCP server in namespace $1 on port $2 that answers each
# connection with the address it came from (stopped by `down`).
echo_server() {
  in_ns "$1" python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode() + b"\n")
    c.close()
' "$2" >/dev/null 2>&1 &
}

# What a client in namespace $1 reads from $2:$3 (empty if it cannot
# connect within 2 s).
fetch() {
  in_ns "$1" python3 -c '
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as c:
        print(c.recv(100).decode().strip())
except OSError:
    pass
' "$2" "$3"
}

# Whether a connection from namespace $1 to $2:7000 fails, as NAT without
# port forwarding must make it; says which way it went as $3.
refused() {
  if [ -z "$(fetch "$1" "$2" 7000)" ]; then
    log "$3: refused"
  else
    log "$3: connected; the NAT lets new connections in"
    return 1
  fi
}

check() {
  up
  local failed=0
  trap down EXIT
  echo_server "$P-dir" 7000
  echo_server "$P-h1" 7000
  echo_server "$P-h2" 7000
  sleep 0.5
  # Out of a home: allowed, and seen from the router's public address.
  local seen
  seen=$(fetch "$P-h1" 10.200.0.2 7000)
  if [ "$seen" = 10.200.0.11 ]; then
    log "home 1 -> directory: connects, seen as 10.200.0.11 (masqueraded)"
  else
    log "home 1 -> directory: expected to be seen as 10.200.0.11, got '${seen}'"
    failed=1
  fi
  # Into a home: the public side even knows the way (a route to the LAN via
  # the router's WAN address), and the router still refuses it.
  in_ns "$P-dir" ip route add 192.168.1.0/24 via 10.200.0.11
  refused "$P-dir" 192.168.1.2 "directory -> home 1 (with a route to its LAN)" || failed=1
  refused "$P-h2" 10.200.0.11 "home 2 -> home 1's public address" || failed=1
  return $failed
}

need_tools
case "${1:-}" in
  up) up ;;
  down) down ;;
  check) check ;;
  *) fail "usage: scripts/testnet.sh up|down|check" ;;
esac
