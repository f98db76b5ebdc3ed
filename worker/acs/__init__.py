"""Talking to ACS: HMAC request signing, Microsoft Entra ID tokens, the aiohttp client and how answers are read."""
