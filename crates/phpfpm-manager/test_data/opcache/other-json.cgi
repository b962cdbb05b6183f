Content-Type: application/json
Cache-Control: no-store

{"status":"ok"}
