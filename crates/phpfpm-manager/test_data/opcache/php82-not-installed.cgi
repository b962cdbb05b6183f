X-Powered-By: PHP/8.2.36
Content-Type: application/json
Cache-Control: no-store

{"probe":"phpfpm-manager-opcache","version":1,"installed":false}
