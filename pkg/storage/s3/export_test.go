package s3

import "github.com/minio/minio-go/v7/pkg/credentials"

// SetNoIAM leaves the IAM provider out of the default credential chain
// until the returned function is called: it would query the instance
// metadata address, which tests must not reach.
func SetNoIAM() (restore func()) {
	old := defaultProviders
	defaultProviders = func() []credentials.Provider {
		return []credentials.Provider{&credentials.EnvAWS{}, &credentials.EnvMinio{}, &credentials.FileAWSCredentials{}}
	}
	return func() { defaultProviders = old }
}

// ParseSize exposes parseSize.
var ParseSize = parseSize

// QueryParams exposes queryParams.
func QueryParams() []string { return queryParams }
