del(.ca.cert_file, .ca.key_file)
