Content-type: text/html; charset=UTF-8

<br />
<b>Fatal error</b>:  Uncaught Error: Call to undefined function undefined_function_xyz() in /tmp/opcache-capture.0t6j1I/www/fatal.php:1
Stack trace:
#0 {main}
  thrown in <b>/tmp/opcache-capture.0t6j1I/www/fatal.php</b> on line <b>1</b><br />
