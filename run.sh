#!/usr/bin/env bash
# run.sh [--dir DIR]: the main job. Sets up the SoftHSM dev token (softhsm-setup.sh), builds Keyward,
# starts keywardd, shows a round trip (init/unlock as needed, KEK, DEK, encrypt, decrypt), then keeps
# the agent serving in the foreground until Ctrl-C. Drive it from a second terminal (README).
set -euo pipefail
cd "$(dirname "$0")"
dir="${XDG_DATA_HOME:-$HOME/.local/share}/keyward/softhsm"
[ "${1:-}" = "--dir" ] && dir="${2:?--dir needs a directory}"
pin="${KEYWARD_DEV_PIN:-123456}"

./softhsm-setup.sh --dir "$dir"
echo "run: building (release)" >&2
cargo build --release --bins -q
export PATH="$PWD/target/release:$PATH"

keywardd --config "$dir/keyward.toml" &
agent=$!
trap 'kill -TERM $agent 2>/dev/null; wait $agent' INT TERM
for _ in $(seq 1 300); do
  keyward status >/dev/null 2>&1 && break
  kill -0 $agent 2>/dev/null || { echo "run: keywardd exited" >&2; exit 1; }
  sleep 0.1
done

step() { printf '\n$ %s\n' "$*"; }
step keyward status; keyward status
status=$(keyward --json status)
if ! grep -q '"initialized":true' <<<"$status"; then
  step "keyward init --pin-stdin   # dev PIN"; echo "$pin" | keyward init --pin-stdin
elif grep -q '"locked":true' <<<"$status"; then
  step "keyward unlock --pin-stdin   # dev PIN"; echo "$pin" | keyward unlock --pin-stdin
fi
if keyward kek list | grep -q '(none)'; then
  step "keyward kek create --label demo"; keyward kek create --label demo
fi
step "DEK=\$(keyward dek create --label demo)"; dek=$(keyward dek create --label demo); echo "$dek"
step "echo 'Hello from Keyward' | keyward encrypt --dek \$DEK -o $dir/demo.cryppo"
echo 'Hello from Keyward' | keyward encrypt --dek "$dek" -o "$dir/demo.cryppo"; cat "$dir/demo.cryppo"
step "keyward decrypt -i $dir/demo.cryppo"; keyward decrypt -i "$dir/demo.cryppo"
cat <<MSG

keywardd is running (pid $agent); Ctrl-C stops it and removes its socket.
In a second terminal:  export PATH="$PWD/target/release:\$PATH"; keyward status
MSG
wait $agent
