#!/bin/sh
# Wire SHDX and SZDX to recognise each other. Run each half on its own side, by its operator.
# The JWKS files are exchanged out of band (signed letter, registry of exchanges, a call where
# both read the key thumbprints aloud): pinning a key fetched over the same channel you are
# about to trust would prove nothing.
set -eu

# --- on SHDX: publish the keys to give to SZDX --------------------------------------------
curl -fsS https://api.shdx.example/.well-known/jwks.json > shdx.jwks.json   # hand to SZDX

# --- on SZDX: publish the keys to give to SHDX --------------------------------------------
curl -fsS https://api.szdx.example/.well-known/jwks.json > szdx.jwks.json   # hand to SHDX

# --- on SZDX (env: szdx.env): trust SHDX with the pinned keys ------------------------------
# Fetches https://api.shdx.example/.well-known/dataex-exchange and refuses unless its signature
# verifies with shdx.jwks.json and it names SHDX; the feed URL comes from that signed document.
dataex peers add SHDX https://api.shdx.example --jwks shdx.jwks.json
dataex peers list

# --- on SHDX (env: shdx.env): trust SZDX, the same way -------------------------------------
dataex peers add SZDX https://api.szdx.example --jwks szdx.jwks.json

# --- on SHDX: give a seller a member credential, so peers register it without paperwork ----
# (admin token; the organisation registered its Ed25519 public key with POST /v1/keys first)
curl -fsS -X POST -H "Authorization: Bearer $SHDX_ADMIN" -H 'content-type: application/json' \
  https://api.shdx.example/v1/member-credentials -d "{\"org_id\": \"$SELLER_ORG_ID\"}"
