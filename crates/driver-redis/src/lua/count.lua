-- Number of live entries of a namespace, without reading them.
-- KEYS: idx, ttl
return live_count(KEYS[1], KEYS[2], now_us())
