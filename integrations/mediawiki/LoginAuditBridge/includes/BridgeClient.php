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

	/** Every answer of the bridge's hook routes carries it: anything else is another service. */
	public const IDENTITY_HEADER = 'X-Login-Audit-Bridge';
	/** The event's id, fixed by the extension and sent with every attempt. */
	public const EVENT_ID_HEADER = 'X-Login-Audit-Event-Id';

	/**
	 * @param array $payload
	 * @param string|null $eventId null for jobs queued by an older version, which had none
	 * @return DeliveryResult
	 */
	public function send( array $payload, ?string $eventId ): DeliveryResult {
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
		if ( $eventId !== null && $eventId !== '' ) {
			$request->setHeader( self::EVENT_ID_HEADER, $eventId );
		}
		$status = $request->execute();
		$code = $request->getStatus();
		$bridge = $code > 0 ? $request->getResponseHeader( self::IDENTITY_HEADER ) : null;
		$body = $code > 0 ? (string)$request->getContent() : '';
		if ( $code >= 200 && $code < 300 ) {
			$error = $bridge === null ? "HTTP $code without an " . self::IDENTITY_HEADER
				. ' header: not a login-audit-bridge' : '';
			return new DeliveryResult( $code, $error, null, $bridge );
		}
		$error = $code > 0 ? self::shorten( $body ) : self::statusText( $status );
		return new DeliveryResult(
			$code,
			$error,
			self::retryAfter( $request->getResponseHeader( 'retry-after' ) ),
			$bridge,
			$bridge !== null && self::saysFinal( $body )
		);
	}

	/**
	 * Whether a JSON error body of the bridge says it would refuse this exact body again.
	 *
	 * @param string $body
	 * @return bool
	 */
	private static function saysFinal( string $body ): bool {
		$error = json_decode( $body, true );
		return is_array( $error ) && ( $error['final'] ?? null ) === true;
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
