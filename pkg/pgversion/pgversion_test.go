package pgversion

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMajor(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int
		wantErr bool
	}{
		{in: "15.8 (Debian 15.8-1.pgdg120+1)", want: 15},
		{in: "16beta1", want: 16},
		{in: "9.6.24", want: 9},
		{in: "14", want: 14},
		{in: "17", want: 17},
		{in: "", wantErr: true},
		{in: "devel", wantErr: true},
		{in: "x15", wantErr: true},
		{in: "0.1", wantErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := Major(tc.in)
			if tc.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}
