Content-Type: application/json
Cache-Control: no-store

{"probe":"phpfpm-manager-opcache","version":1,"installed":true,"restrict_api":"\/nonexistent-dir","status":false,"api_allowed":false,"memory_consumption":null}
