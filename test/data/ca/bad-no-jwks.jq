del(.ca.jwks_file)
