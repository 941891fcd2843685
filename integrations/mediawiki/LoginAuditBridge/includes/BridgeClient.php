<?php
/**
 * Sends one payload to the bridge through MediaWiki's HTTP client, with a short timeout.
 *
 * @file
 */

namespace MediaWiki\Extension\LoginAuditBridge;

use Config;
use MediaWiki\Http\HttpRequestFactory;
use MediaWiki\MediaWikiServices;

class BridgeClient {
	/** @var HttpRequestFactory */
	private $http;
	/** @var Config */
	private $config;

	public function __construct( HttpRequestFactory $http, Config $config ) {
		$this->http = $http;
		$this->config = $config;
	}

	public static function fromServices(): self {
		$services = MediaWikiServices::getInstance();
		return new self( $services->getHttpRequestFactory(), $services->getMainConfig() );
	}

	/**
	 * @param array $payload
	 * @return DeliveryResult
	 */
	public function send( array $payload ): DeliveryResult {
		$timeout = (float)$this->config->get( 'LoginAuditBridgeTimeout' );
		$verify = (bool)$this->config->get( 'LoginAuditBridgeVerifyTls' );
		$request = $this->http->create( (string)$this->config->get( 'LoginAuditBridgeUrl' ), [
			'method' => 'POST',
			'postData' => self::encode( $payload ),
			'timeout' => $timeout,
			'connectTimeout' => $timeout,
			'sslVerifyHost' => $verify,
			'sslVerifyCert' => $verify,
			// A redirect would resend the body (and the token) somewhere the admin did not name.
			'followRedirects' => false,
		], __METHOD__ );
		$request->setHeader( 'Content-Type', 'application/json' );
		$token = (string)$this->config->get( 'LoginAuditBridgeToken' );
		if ( $token !== '' ) {
			$request->setHeader( 'Authorization', "Bearer $token" );
		}
		$status = $request->execute();
		$code = $request->getStatus();
		if ( $code >= 200 && $code < 300 ) {
			return new DeliveryResult( $code );
		}
		$error = $code > 0 ? self::shorten( (string)$request->getContent() ) : self::statusText( $status );
		return new DeliveryResult( $code, $error, self::retryAfter( $request->getResponseHeader( 'retry-after' ) ) );
	}

	/**
	 * @param array $payload
	 * @return string
	 */
	public static function encode( array $payload ): string {
		// Invalid UTF-8 would make json_encode fail and lose the event; substitute instead.
		return json_encode(
			$payload,
			JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE | JSON_THROW_ON_ERROR
		);
	}

	/**
	 * @param \StatusValue $status
	 * @return string
	 */
	private static function statusText( $status ): string {
		$texts = [];
		foreach ( $status->getErrors() as $error ) {
			$key = $error['message'] instanceof \MessageSpecifier
				? $error['message']->getKey() : (string)$error['message'];
			$params = array_filter( $error['params'] ?? [], 'is_scalar' );
			$texts[] = $params ? $key . ': ' . implode( ', ', $params ) : $key;
		}
		return $texts ? implode( '; ', $texts ) : 'no answer';
	}

	private static function retryAfter( ?string $header ): ?int {
		return $header !== null && ctype_digit( trim( $header ) ) ? (int)trim( $header ) : null;
	}

	private static function shorten( string $text ): string {
		return mb_substr( trim( $text ), 0, 300 );
	}
}
