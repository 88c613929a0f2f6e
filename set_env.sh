# shellcheck shell=bash
# Variables the docker compose files read. Source it (do not run it):  source set_env.sh
# Values already set in the shell win, so it is safe to source twice and to override before sourcing.
# No network calls: the host IP comes from the local interfaces, the secrets from /dev/urandom.

if ! (return 0 2>/dev/null); then
    echo "set_env.sh sets variables for your shell: source it (source set_env.sh), do not run it" >&2
    exit 1
fi

_chatqna_root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]:-$0}")" >/dev/null && pwd)

# This host's address, for reaching the published ports from other machines (README's curl examples).
if [ -z "${HOST_IP:-}" ]; then
    HOST_IP=$( { hostname -I 2>/dev/null || true; } | awk '{print $1}')
    [ -n "$HOST_IP" ] || HOST_IP=127.0.0.1
fi
export HOST_IP

# Models live on the host and are mounted read-only at /models in the containers.
case "${CHATQNA_MODELS_DIR:-}" in
    "") CHATQNA_MODELS_DIR="$_chatqna_root/models" ;;
    /*) ;;
    *) CHATQNA_MODELS_DIR="$PWD/$CHATQNA_MODELS_DIR" ;;
esac
export CHATQNA_MODELS_DIR
export LLM_MODEL="${LLM_MODEL:-SmolLM2-135M-Instruct.Q4_1.gguf}"
export EMBEDDING_MODEL="${EMBEDDING_MODEL:-all-MiniLM-L6-v2}"

# The collection that dataprep fills and the retriever searches.
export INDEX_NAME="${INDEX_NAME:-rag-redis}"

# Host port of the gateway, the one published port (chat, models, documents, accounts).
export MEGA_SERVICE_PORT="${MEGA_SERVICE_PORT:-8888}"

# Secrets: the mesh's internal token (every internal service's <SERVICE>_API_KEY), the gateway's JWT
# signing secret and the PostgreSQL password. Each one set in the shell wins; otherwise it is read from
# the secrets file, or generated here (256 random bits, hex) and added to it, so that sourcing again
# gives the same values. The file (git-ignored, mode 600) is KEY=VALUE lines:
#   kubectl -n chatqna create secret generic chatqna-secrets --from-env-file=.state/secrets.env
# The values are never printed.
case "${CHATQNA_STATE_DIR:-}" in
    "") _chatqna_secrets="$_chatqna_root/.state/secrets.env" ;;
    /*) _chatqna_secrets="$CHATQNA_STATE_DIR/secrets.env" ;;
    *) _chatqna_secrets="$PWD/$CHATQNA_STATE_DIR/secrets.env" ;;
esac
for _chatqna_name in CHATQNA_INTERNAL_TOKEN GATEWAY_JWT_SECRET POSTGRES_PASSWORD; do
    eval "_chatqna_value=\${$_chatqna_name:-}"
    if [ -z "$_chatqna_value" ] && [ -f "$_chatqna_secrets" ]; then
        _chatqna_value=$(sed -n "s/^${_chatqna_name}=//p" "$_chatqna_secrets" | tail -n 1)
    fi
    if [ -z "$_chatqna_value" ]; then
        _chatqna_value=$(od -An -vtx1 -N32 /dev/urandom | tr -d ' \n')
        (
            umask 077
            mkdir -p "$(dirname -- "$_chatqna_secrets")"
            printf '%s=%s\n' "$_chatqna_name" "$_chatqna_value" >>"$_chatqna_secrets"
        )
        chmod 600 "$_chatqna_secrets"
    fi
    export "$_chatqna_name=$_chatqna_value"
done

if [ ! -e "$CHATQNA_MODELS_DIR/$LLM_MODEL" ] || [ ! -e "$CHATQNA_MODELS_DIR/$EMBEDDING_MODEL" ]; then
    echo "set_env.sh: $LLM_MODEL or $EMBEDDING_MODEL is missing from $CHATQNA_MODELS_DIR; run 'chatqna models fetch'" >&2
fi
unset _chatqna_root _chatqna_secrets _chatqna_name _chatqna_value
