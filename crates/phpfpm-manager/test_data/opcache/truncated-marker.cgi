Content-Type: application/json
Cache-Control: no-store

{"probe":"phpfp