Status: 500 Internal Server Error
Content-type: text/html; charset=UTF-8

