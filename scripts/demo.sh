#!/usr/bin/env bash
# The main job: serve SmolLM2-135M-Instruct (CPU backend) with a cartridge
# built from a document the project ships (data/documents/marrowick_island.txt),
# ask it one question, print a curl example, and keep serving until Ctrl-C.
set -euo pipefail
BUILD="${1:-build}"
cd "$(dirname "$0")/.."
CACHE="${CARTSERVE_CACHE:-$HOME/.cache/cartserve}"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
PORT="${CARTSERVE_PORT:-8000}"
DOC=data/documents/marrowick_island.txt
CART_DIR="$CACHE/demo"
CART="$CART_DIR/marrowick.pt"
BIN="$BUILD/bin/cartserve"

mkdir -p "$CART_DIR"
if [ ! -f "$CART" ] || [ "$DOC" -nt "$CART" ] || [ "$BIN" -nt "$CART" ]; then
  echo "demo: building the cartridge from $DOC"
  "$BIN" cartridge build "$MODEL" --text "$DOC" -o "$CART" --id marrowick
fi

CONFIG='{"kv_connector": "CartridgeConnector",
 "kv_connector_module_path": "vllm.distributed.kv_transfer.kv_connector.v1.cartridge_connector",
 "kv_connector_extra_config": {"cartridges": [{"cartridge_id": "marrowick", "path": "'"$CART"'"}],
   "router": {"type": "explicit"}, "cartridge_dir": "'"$CART_DIR"'",
   "registry_db": "'"$CART_DIR"'/registry.db"},
 "kv_role": "kv_both"}'

QUESTION="$(python3 -c 'import json; q=json.load(open("tests/fixtures/cartridge_qa/questions.json"))["questions"]; print(next(x["question"] for x in q if x["doc"]=="marrowick"))')"
BODY="{\"model\": \"smollm2\", \"messages\": [{\"role\": \"user\", \"content\": \"$QUESTION\"}], \"max_tokens\": 64, \"temperature\": 0, \"kv_transfer_params\": {\"cartridge_id\": \"marrowick\"}}"

"$BIN" serve "$MODEL" --host 127.0.0.1 --port "$PORT" --served-model-name smollm2 \
  --max-model-len 4096 --kv-transfer-config "$CONFIG" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { echo "demo: the server did not start" >&2; exit 1; }
  sleep 0.5
done

cat <<MSG

demo: cartserve is serving SmolLM2 on http://127.0.0.1:$PORT with the cartridge 'marrowick'
      (the KV cache of $DOC; the document is NOT in the prompt). Ask it:

curl http://127.0.0.1:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\
  -d '$BODY'

demo: asking once now...
MSG
curl -s "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' -d "$BODY" |
  python3 -c 'import json,sys; r=json.load(sys.stdin); print("answer:", r["choices"][0]["message"]["content"])'
echo
echo "demo: serving until Ctrl-C (other endpoints: /v1/models, /v1/cartridges, /metrics)"
wait $SERVER
